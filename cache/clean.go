package cache

import (
	"errors"
	"fmt"
	"sync"
)

// Clean is the shared clean-table cache (tier 2): immutable copies of
// tables that match what is on disk, shared by every open image under one
// memory budget. It never holds dirty data, so losing an entry only costs a
// reload.
//
// Every lookup carries the generation the caller's authoritative state
// (qcow2: the per-table generation array) holds for the table now; an entry
// filed under another generation is a miss. Generations of one Key must
// never repeat and must only grow: draw them from one counter per image, not
// from per-table increments, so a table freed and reallocated at the same
// offset cannot match an old copy.
//
// Returned slices are shared and immutable: callers must not modify them,
// and implementations never recycle them (the garbage collector frees them
// once no reader holds one).
type Clean interface {
	// Get returns the table for key if it is cached under gen. A hit does
	// not allocate.
	Get(key Key, gen uint64) ([]byte, bool)
	// Fill returns the table for key under gen, loading it with load on a
	// miss. Concurrent Fills of the same key and generation share one
	// load. The loaded table is offered to the cache; load must return a
	// slice nobody modifies afterwards.
	Fill(key Key, gen uint64, load func(Key) ([]byte, error)) ([]byte, error)
	// Contains reports whether key is cached under gen, and counts as a
	// use of the entry for the replacement policy, but not as a lookup in
	// Stats. A caller about to Offer a copy asks it first, to skip the
	// copy of a table the cache already has. It does not allocate.
	Contains(key Key, gen uint64) bool
	// Offer adds a clean table the caller already holds, for example one
	// just written back. It is best effort: the cache may refuse or drop
	// it. data must not be modified afterwards.
	Offer(key Key, gen uint64, data []byte)
	// Stats returns the counters.
	Stats() Stats
	// Close releases the cache (and stops any goroutines it runs). Every
	// later Get misses and every later Offer is ignored.
	Close()
}

// Policy selects the Clean implementation.
type Policy uint8

const (
	// PolicyDefault is the policy the benchmark in
	// docs/design/metadata-cache.md chose: PolicyLRU.
	PolicyDefault Policy = iota
	// PolicyLRU is an exact LRU under one mutex (LRU).
	PolicyLRU
	// PolicyTinyLFU is ristretto v2 with TinyLFU admission and mixed keys
	// (Shared).
	PolicyTinyLFU
)

// defaultPolicy is what PolicyDefault means; see the design note.
const defaultPolicy = PolicyLRU

// CleanConfig sizes a Clean cache.
type CleanConfig struct {
	// MaxBytes is the memory budget for table bytes (at least 1).
	MaxBytes int64
	// TableSize is the typical table size in bytes. TinyLFU sizes its
	// frequency counters from MaxBytes/TableSize; 0 means 64 KiB.
	TableSize int
	// Policy picks the implementation; zero is PolicyDefault.
	Policy Policy
}

// ErrClosed is returned by Fill on a closed cache.
var ErrClosed = errors.New("cache: closed")

// NewClean returns a Clean cache with the configured policy.
func NewClean(cfg CleanConfig) (Clean, error) {
	if cfg.MaxBytes < 1 {
		return nil, fmt.Errorf("cache: CleanConfig.MaxBytes %d must be positive", cfg.MaxBytes)
	}
	if cfg.TableSize < 0 {
		return nil, fmt.Errorf("cache: CleanConfig.TableSize %d must not be negative", cfg.TableSize)
	}
	p := cfg.Policy
	if p == PolicyDefault {
		p = defaultPolicy
	}
	switch p {
	case PolicyLRU:
		return NewLRU(cfg.MaxBytes), nil
	case PolicyTinyLFU:
		return NewShared(cfg)
	}
	return nil, fmt.Errorf("cache: unknown policy %d", cfg.Policy)
}

// cleanEntry is a tier-2 value: immutable once published.
type cleanEntry struct {
	key  Key
	gen  uint64
	data []byte
}

// flights is a per-key singleflight: one load per (key, gen) at a time.
type flights struct {
	mu sync.Mutex
	m  map[Key]*fill
}

type fill struct {
	gen  uint64
	done chan struct{}
	data []byte
	err  error
}

// do runs load for (key, gen) unless a load of the same pair is running, in
// which case it waits for that one. joined reports the latter. A running
// load under another generation is not shared (its bytes may predate or
// postdate gen); the caller loads on its own.
func (f *flights) do(key Key, gen uint64, load func(Key) ([]byte, error)) (data []byte, joined bool, err error) {
	f.mu.Lock()
	if c, ok := f.m[key]; ok && c.gen == gen {
		f.mu.Unlock()
		<-c.done
		return c.data, true, c.err
	} else if ok {
		f.mu.Unlock()
		data, err = load(key)
		return data, false, err
	}
	if f.m == nil {
		f.m = make(map[Key]*fill)
	}
	c := &fill{gen: gen, done: make(chan struct{})}
	f.m[key] = c
	f.mu.Unlock()

	// A panicking load must not leave waiters blocked forever.
	defer func() {
		f.mu.Lock()
		delete(f.m, key)
		f.mu.Unlock()
		close(c.done)
	}()
	c.err = errPanicked
	c.data, c.err = load(key)
	return c.data, false, c.err
}

var errPanicked = errors.New("cache: fill function panicked")
