package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringblk/ringblk/internal/invariants"
)

// Kinds used by the tests, in qcow2's flush order.
const (
	kindRefblock Kind = 1
	kindL2       Kind = 2
	kindL1       Kind = 3 // stands in for L1 pointer chunks
)

// fakeDisk serves loads with bytes derived from the key (Off, then Kind)
// and counts them.
type fakeDisk struct {
	loads atomic.Int64
	fail  atomic.Pointer[Key] // a load of this key fails
	gate  chan struct{}       // if non-nil, loads wait on it
}

var errLoad = errors.New("injected load error")

func (d *fakeDisk) load(key Key, dst []byte) error {
	d.loads.Add(1)
	if d.gate != nil {
		<-d.gate
	}
	if k := d.fail.Load(); k != nil && *k == key {
		return errLoad
	}
	clear(dst)
	binary.LittleEndian.PutUint64(dst, uint64(key.Off))
	dst[8] = byte(key.Kind)
	return nil
}

func newTestSet(t testing.TB, tables int, d *fakeDisk) *Set {
	t.Helper()
	s, err := NewSet(Config{Tables: tables, TableSize: 16, Load: d.load})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func l2(i int) Key { return Key{Image: 1, Kind: kindL2, Off: int64(i) << 16} }

// touch gets and unpins key, checking the loaded bytes.
func touch(t *testing.T, s *Set, key Key) {
	t.Helper()
	tb, err := s.Get(key)
	if err != nil {
		t.Fatalf("Get(%+v): %v", key, err)
	}
	if got := int64(binary.LittleEndian.Uint64(tb.Data())); got != key.Off || tb.Key() != key {
		t.Fatalf("Get(%+v) returned table %+v with offset %#x", key, tb.Key(), got)
	}
	tb.Unpin()
}

func resident(s *Set, key Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.idx.get(s, key)
	return ok
}

func residents(s *Set, keys ...Key) string {
	var b strings.Builder
	for i, k := range keys {
		if resident(s, k) {
			fmt.Fprintf(&b, "%d", i)
		} else {
			b.WriteByte('-')
		}
	}
	return b.String()
}

func TestSetConfigRejected(t *testing.T) {
	d := &fakeDisk{}
	for _, cfg := range []Config{
		{Tables: 0, TableSize: 16, Load: d.load},
		{Tables: 1, TableSize: 0, Load: d.load},
		{Tables: 1, TableSize: 16},
	} {
		if _, err := NewSet(cfg); err == nil {
			t.Errorf("NewSet(%+v) succeeded", cfg)
		}
	}
}

func TestSetLRUOrder(t *testing.T) {
	d := &fakeDisk{}
	s := newTestSet(t, 3, d)
	k := []Key{l2(0), l2(1), l2(2), l2(3), l2(4)}
	touch(t, s, k[0])
	touch(t, s, k[1])
	touch(t, s, k[2])
	touch(t, s, k[0]) // 0 becomes most recent; 1 is now the LRU
	touch(t, s, k[3])
	if got := residents(s, k...); got != "0-23-" {
		t.Fatalf("after touching 0,1,2,0,3: resident %q, want 0-23-", got)
	}
	touch(t, s, k[4]) // evicts 2
	if got := residents(s, k...); got != "0--34" {
		t.Fatalf("after touching 4: resident %q, want 0--34", got)
	}
	st := s.Stats()
	if st.Hits != 1 || st.Misses != 5 || st.Fills != 5 || st.Evictions != 2 || st.Resident != 3 {
		t.Fatalf("stats %+v, want 1 hit, 5 misses, 5 fills, 2 evictions, 3 resident", st)
	}
	if d.loads.Load() != 5 {
		t.Fatalf("%d loads, want 5", d.loads.Load())
	}
}

func TestSetPinBlocksEviction(t *testing.T) {
	d := &fakeDisk{}
	s := newTestSet(t, 2, d)
	pinned, err := s.Get(l2(0))
	if err != nil {
		t.Fatal(err)
	}
	touch(t, s, l2(1))
	touch(t, s, l2(2)) // 0 is older but pinned: 1 must go
	if got := residents(s, l2(0), l2(1), l2(2)); got != "0-2" {
		t.Fatalf("resident %q, want 0-2", got)
	}
	other, err := s.Get(l2(2))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(l2(3)); !errors.Is(err, ErrFull) {
		t.Fatalf("Get with every table pinned: %v, want ErrFull", err)
	}
	if st := s.Stats(); st.Full != 1 || st.Pinned != 2 {
		t.Fatalf("stats %+v, want Full 1, Pinned 2", st)
	}
	other.Unpin()
	touch(t, s, l2(3))
	if got := residents(s, l2(0), l2(1), l2(2), l2(3)); got != "0--3" {
		t.Fatalf("resident %q, want 0--3", got)
	}
	pinned.Pin() // a second holder
	pinned.Unpin()
	touch(t, s, l2(4)) // 0 still pinned once: 3 goes
	if got := residents(s, l2(0), l2(3), l2(4)); got != "0-2" {
		t.Fatalf("resident %q, want 0-2", got)
	}
	pinned.Unpin()
	if st := s.Stats(); st.Pinned != 0 {
		t.Fatalf("Pinned %d after the last Unpin, want 0", st.Pinned)
	}
}

func TestSetDirtyNeverEvicted(t *testing.T) {
	d := &fakeDisk{}
	s := newTestSet(t, 3, d)
	for i := range 2 {
		tb, err := s.Get(l2(i))
		if err != nil {
			t.Fatal(err)
		}
		tb.Lock()
		tb.Data()[15] = 0xd0 + byte(i)
		tb.MarkDirty(1)
		tb.Unlock()
		tb.Unpin()
	}
	// One clean slot is left; every miss now recycles it.
	for i := 2; i < 10; i++ {
		touch(t, s, l2(i))
		if !resident(s, l2(0)) || !resident(s, l2(1)) {
			t.Fatalf("a dirty table was evicted by the miss on %d", i)
		}
	}
	tb, err := s.Get(l2(9))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(l2(10)); !errors.Is(err, ErrFull) {
		t.Fatalf("Get with all tables dirty or pinned: %v, want ErrFull", err)
	}
	tb.Unpin()
	if st := s.Stats(); st.Dirty != 2 || st.Resident != 3 {
		t.Fatalf("stats %+v, want Dirty 2, Resident 3", st)
	}

	// The caller's answer to ErrFull: flush, then retry.
	var written []byte
	err = s.Flush(func(tb *Table) error {
		written = append(written, tb.Data()[15])
		return nil
	}, func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(written) != 2 || int(written[0])+int(written[1]) != 0xd0+0xd1 {
		t.Fatalf("Flush wrote %x, want the two modified tables", written)
	}
	if st := s.Stats(); st.Dirty != 0 {
		t.Fatalf("Dirty %d after Flush, want 0", st.Dirty)
	}
	// Flushed tables rejoin the LRU list as most recent: three more misses
	// evict 9, then both of them.
	touch(t, s, l2(10))
	touch(t, s, l2(11))
	touch(t, s, l2(12))
	if resident(s, l2(0)) || resident(s, l2(1)) {
		t.Fatal("flushed tables were not evictable")
	}
}

// flushLog records write-backs and barriers.
type flushLog struct {
	events []string
	failOn string // fail the write-back of this event ("b" fails a barrier)
	nth    int    // … its nth occurrence (1-based); 0 means every time
	seen   int
}

func (f *flushLog) writeBack(t *Table) error {
	k := t.Key()
	ev := fmt.Sprintf("k%d@%x", k.Kind, k.Off)
	return f.record(ev)
}

func (f *flushLog) barrier() error { return f.record("b") }

func (f *flushLog) record(ev string) error {
	if ev == f.failOn {
		f.seen++
		if f.nth == 0 || f.seen == f.nth {
			f.events = append(f.events, ev+"!")
			return errLoad
		}
	}
	f.events = append(f.events, ev)
	return nil
}

func dirty(t *testing.T, s *Set, key Key, level Level) {
	t.Helper()
	tb, err := s.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	tb.Lock()
	tb.Data()[12]++
	tb.MarkDirty(level)
	tb.Unlock()
	tb.Unpin()
}

func TestSetFlushOrder(t *testing.T) {
	d := &fakeDisk{}
	s := newTestSet(t, 8, d)
	rb := func(i int) Key { return Key{Image: 1, Kind: kindRefblock, Off: int64(i) << 16} }
	l1 := Key{Image: 1, Kind: kindL1, Off: 0x30000}
	// Dirty them in the reverse of the required order.
	dirty(t, s, l1, 2)
	dirty(t, s, l2(5), 1)
	dirty(t, s, rb(7), 0)
	dirty(t, s, l2(6), 1)
	dirty(t, s, rb(8), 0)
	touch(t, s, l2(9)) // clean: never written

	var f flushLog
	if err := s.Flush(f.writeBack, f.barrier); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(f.events, " ")
	// Within a level, slot order; the levels and barriers are the point.
	want := "k1@70000 k1@80000 b k2@50000 k2@60000 b k3@30000 b"
	if got != want {
		t.Fatalf("flush events\n got %s\nwant %s", got, want)
	}

	// Nothing dirty and no barrier requested: a flush costs nothing.
	f = flushLog{}
	if err := s.Flush(f.writeBack, f.barrier); err != nil || len(f.events) != 0 {
		t.Fatalf("idle flush: %v, events %v", err, f.events)
	}

	// RequireBarrier (COW data before the L2 entry): a barrier first, even
	// with one level only; and only once.
	s.RequireBarrier()
	dirty(t, s, l2(5), 1)
	f = flushLog{}
	if err := s.Flush(f.writeBack, f.barrier); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.events, " "); got != "b k2@50000 b" {
		t.Fatalf("flush after RequireBarrier: %s, want b k2@50000 b", got)
	}
	s.RequireBarrier()
	f = flushLog{}
	if err := s.Flush(f.writeBack, f.barrier); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.events, " "); got != "b" {
		t.Fatalf("flush with only a barrier requested: %q, want b", got)
	}
}

func TestSetFlushErrorsKeepTablesDirty(t *testing.T) {
	d := &fakeDisk{}
	s := newTestSet(t, 8, d)
	rb := Key{Image: 1, Kind: kindRefblock, Off: 0x70000}
	dirty(t, s, rb, 0)
	dirty(t, s, l2(5), 1)
	dirty(t, s, l2(6), 1)

	// The second L2 write fails: the refblock level was covered by a
	// barrier and is clean; both L2 tables stay dirty.
	f := flushLog{failOn: "k2@60000"}
	if err := s.Flush(f.writeBack, f.barrier); !errors.Is(err, errLoad) {
		t.Fatalf("Flush: %v, want the write-back error", err)
	}
	if got := strings.Join(f.events, " "); got != "k1@70000 b k2@50000 k2@60000!" {
		t.Fatalf("events %s", got)
	}
	if st := s.Stats(); st.Dirty != 2 || st.Pinned != 0 {
		t.Fatalf("stats %+v, want Dirty 2 (the L2 tables), Pinned 0", st)
	}

	// The barrier after the L2 level fails: the L2 tables were written but
	// are not durable, so they stay dirty.
	f = flushLog{failOn: "b"}
	if err := s.Flush(f.writeBack, f.barrier); !errors.Is(err, errLoad) {
		t.Fatalf("Flush: %v, want the barrier error", err)
	}
	if got := strings.Join(f.events, " "); got != "k2@50000 k2@60000 b!" {
		t.Fatalf("events %s", got)
	}
	if st := s.Stats(); st.Dirty != 2 {
		t.Fatalf("Dirty %d after a failed barrier, want 2", st.Dirty)
	}

	// A failed opening barrier writes nothing and stays requested.
	s.RequireBarrier()
	f = flushLog{failOn: "b", nth: 1}
	if err := s.Flush(f.writeBack, f.barrier); !errors.Is(err, errLoad) {
		t.Fatalf("Flush: %v, want the barrier error", err)
	}
	if got := strings.Join(f.events, " "); got != "b!" {
		t.Fatalf("events %s", got)
	}
	f = flushLog{}
	if err := s.Flush(f.writeBack, f.barrier); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.events, " "); got != "b k2@50000 k2@60000 b" {
		t.Fatalf("retry events %s", got)
	}
	if st := s.Stats(); st.Dirty != 0 {
		t.Fatalf("Dirty %d after a good flush, want 0", st.Dirty)
	}
}

// TestSetMarkDirtyDuringFlush: invariants builds catch the broken REQUIRES;
// other builds must not mark the re-dirtied table clean.
func TestSetMarkDirtyDuringFlush(t *testing.T) {
	d := &fakeDisk{}
	s := newTestSet(t, 4, d)
	held, err := s.Get(l2(1))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unpin()
	held.MarkDirty(0)
	panicked := func() (p bool) {
		defer func() { p = recover() != nil }()
		_ = s.Flush(func(*Table) error {
			held.MarkDirty(0)
			return nil
		}, func() error { return nil })
		return false
	}()
	if invariants.Enabled {
		if !panicked {
			t.Fatal("MarkDirty during Flush did not panic in an invariants build")
		}
		return
	}
	if panicked {
		t.Fatal("MarkDirty during Flush panicked outside invariants builds")
	}
	if !held.Dirty() {
		t.Fatal("a table modified during its write-back was marked clean")
	}
}

func TestSetLoadSharedByConcurrentGets(t *testing.T) {
	d := &fakeDisk{gate: make(chan struct{})}
	s := newTestSet(t, 4, d)
	const readers = 8
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for range readers {
		wg.Go(func() {
			tb, err := s.Get(l2(3))
			if err != nil {
				errs <- err
				return
			}
			if binary.LittleEndian.Uint64(tb.Data()) != 3<<16 {
				errs <- fmt.Errorf("wrong bytes %x", tb.Data())
			}
			tb.Unpin()
		})
	}
	// Let the one loader through once the others have had time to queue
	// behind it (if some arrive late they hit; the count holds either way).
	for d.loads.Load() == 0 {
		runtime.Gosched()
	}
	time.Sleep(20 * time.Millisecond)
	close(d.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := d.loads.Load(); n != 1 {
		t.Fatalf("%d loads for one key, want 1", n)
	}
}

func TestSetLoadError(t *testing.T) {
	d := &fakeDisk{}
	s := newTestSet(t, 2, d)
	k := l2(4)
	d.fail.Store(&k)
	if _, err := s.Get(k); !errors.Is(err, errLoad) {
		t.Fatalf("Get: %v, want the load error", err)
	}
	if resident(s, k) {
		t.Fatal("a failed load left an entry")
	}
	if st := s.Stats(); st.Pinned != 0 || st.Resident != 0 {
		t.Fatalf("stats %+v after a failed load", st)
	}
	d.fail.Store(nil)
	touch(t, s, k)
	touch(t, s, l2(5))
	touch(t, s, l2(6)) // the failed slot went back to the free list
	if got := residents(s, k, l2(5), l2(6)); got != "-12" {
		t.Fatalf("resident %q, want -12", got)
	}
}

func TestSetDiscard(t *testing.T) {
	d := &fakeDisk{}
	s := newTestSet(t, 2, d)
	dirty(t, s, l2(1), 1)
	touch(t, s, l2(2))
	if !s.Discard(l2(1)) || !s.Discard(l2(2)) {
		t.Fatal("Discard of resident tables returned false")
	}
	if s.Discard(l2(3)) {
		t.Fatal("Discard of an absent table returned true")
	}
	if st := s.Stats(); st.Dirty != 0 || st.Resident != 0 {
		t.Fatalf("stats %+v after discarding everything", st)
	}
	var f flushLog
	if err := s.Flush(f.writeBack, f.barrier); err != nil || len(f.events) != 0 {
		t.Fatalf("a discarded dirty table was written: %v %v", f.events, err)
	}
	touch(t, s, l2(4))
	touch(t, s, l2(5))
	if st := s.Stats(); st.Evictions != 0 {
		t.Fatalf("%d evictions: discarded slots were not freed", st.Evictions)
	}
}

func TestSetEvictedHook(t *testing.T) {
	d := &fakeDisk{}
	var got []Key
	s, err := NewSet(Config{Tables: 1, TableSize: 16, Load: d.load, Evicted: func(k Key, data []byte) {
		if int64(binary.LittleEndian.Uint64(data)) != k.Off {
			t.Errorf("Evicted(%+v) saw bytes of another table", k)
		}
		got = append(got, k)
	}})
	if err != nil {
		t.Fatal(err)
	}
	touch(t, s, l2(1))
	touch(t, s, l2(2))
	touch(t, s, l2(3))
	if len(got) != 2 || got[0] != l2(1) || got[1] != l2(2) {
		t.Fatalf("Evicted saw %+v, want tables 1 and 2", got)
	}
}

func TestSetHitDoesNotAllocate(t *testing.T) {
	d := &fakeDisk{}
	s := newTestSet(t, 4, d)
	touch(t, s, l2(1))
	k := l2(1)
	allocs := testing.AllocsPerRun(1000, func() {
		tb, err := s.Get(k)
		if err != nil {
			panic(err)
		}
		tb.RLock()
		_ = tb.Data()[0]
		tb.RUnlock()
		tb.Unpin()
	})
	if allocs != 0 {
		t.Fatalf("a tier-1 hit allocates %.1f times, want 0", allocs)
	}
}

// TestSetConcurrent runs readers, writers and flushes together; it is a
// race-detector test with consistency checks on the bytes.
func TestSetConcurrent(t *testing.T) {
	d := &fakeDisk{}
	s, err := NewSet(Config{Tables: 8, TableSize: 16, Load: d.load})
	if err != nil {
		t.Fatal(err)
	}
	var meta sync.Mutex // the driver's metadata lock: writers and Flush
	var wg sync.WaitGroup
	var fails atomic.Int64
	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				k := l2((i*7 + g) % 12)
				tb, err := s.Get(k)
				if errors.Is(err, ErrFull) {
					continue
				}
				if err != nil {
					fails.Add(1)
					return
				}
				tb.RLock()
				if int64(binary.LittleEndian.Uint64(tb.Data())) != k.Off {
					fails.Add(1)
				}
				tb.RUnlock()
				if g == 0 && i%5 == 0 {
					meta.Lock()
					tb.Lock()
					tb.Data()[12]++
					tb.MarkDirty(Level(i % 2))
					tb.Unlock()
					meta.Unlock()
				}
				tb.Unpin()
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			meta.Lock()
			err := s.Flush(func(tb *Table) error {
				tb.RLock()
				defer tb.RUnlock()
				if int64(binary.LittleEndian.Uint64(tb.Data())) != tb.Key().Off {
					fails.Add(1)
				}
				return nil
			}, func() error { return nil })
			meta.Unlock()
			if err != nil {
				fails.Add(1)
			}
		}
	})
	wg.Wait()
	if n := fails.Load(); n != 0 {
		t.Fatalf("%d inconsistencies", n)
	}
	st := s.Stats()
	if st.Pinned != 0 || st.Resident > 8 {
		t.Fatalf("stats %+v: pins leaked or the set grew", st)
	}
}
