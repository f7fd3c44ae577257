package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cleanImpls lists the Clean implementations every contract test runs on.
var cleanImpls = []struct {
	name string
	new  func(t testing.TB, maxBytes int64) Clean
}{
	{"lru", func(t testing.TB, maxBytes int64) Clean { return NewLRU(maxBytes) }},
	{"tinylfu", func(t testing.TB, maxBytes int64) Clean {
		s, err := NewShared(CleanConfig{MaxBytes: maxBytes, TableSize: 64})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}},
}

// settle waits until a Shared has applied the Sets queued so far (a no-op
// for the LRU, whose Sets are synchronous).
func settle(c Clean) {
	if s, ok := c.(*Shared); ok {
		s.c.Wait()
	}
}

// tableBytes is the content of key's table at gen: each copy is distinct.
func tableBytes(key Key, gen uint64) []byte {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint64(b, uint64(key.Off))
	binary.LittleEndian.PutUint64(b[8:], gen)
	b[16] = byte(key.Kind)
	binary.LittleEndian.PutUint32(b[20:], uint32(key.Image))
	return b
}

func checkBytes(key Key, gen uint64, b []byte) error {
	if len(b) != 64 || int64(binary.LittleEndian.Uint64(b)) != key.Off ||
		binary.LittleEndian.Uint64(b[8:]) != gen || b[16] != byte(key.Kind) ||
		ImageID(binary.LittleEndian.Uint32(b[20:])) != key.Image {
		return fmt.Errorf("table for %+v gen %d holds the wrong bytes %x", key, gen, b[:24])
	}
	return nil
}

func TestCleanGenerationMismatchMisses(t *testing.T) {
	for _, impl := range cleanImpls {
		t.Run(impl.name, func(t *testing.T) {
			c := impl.new(t, 1<<20)
			k := Key{Image: 2, Kind: kindL2, Off: 0x50000}
			c.Offer(k, 7, tableBytes(k, 7))
			settle(c)
			b, ok := c.Get(k, 7)
			if !ok {
				t.Fatal("miss on the generation just offered")
			}
			if err := checkBytes(k, 7, b); err != nil {
				t.Fatal(err)
			}
			if _, ok := c.Get(k, 8); ok {
				t.Fatal("hit under a newer generation")
			}
			if _, ok := c.Get(k, 6); ok {
				t.Fatal("hit under an older generation")
			}
			// Same offset, another image or kind: distinct tables.
			if _, ok := c.Get(Key{Image: 3, Kind: kindL2, Off: 0x50000}, 7); ok {
				t.Fatal("hit for another image")
			}
			if _, ok := c.Get(Key{Image: 2, Kind: kindRefblock, Off: 0x50000}, 7); ok {
				t.Fatal("hit for another kind")
			}
			st := c.Stats()
			if st.Stale < 1 || st.Hits != 1 || st.Misses != 4 {
				t.Fatalf("stats %+v, want 1 hit, 4 misses, at least 1 stale", st)
			}
		})
	}
}

// TestCleanLateOfferNeverWins: an older copy offered after a newer one (a
// delayed or reordered Set) must never be served for the newer generation,
// nor replace it.
func TestCleanLateOfferNeverWins(t *testing.T) {
	for _, impl := range cleanImpls {
		t.Run(impl.name, func(t *testing.T) {
			c := impl.new(t, 1<<20)
			for i := range 50 {
				k := Key{Image: 1, Kind: kindL2, Off: int64(i) << 16}
				c.Offer(k, 2, tableBytes(k, 2))
				if i%2 == 0 {
					settle(c) // half the time the newer copy is applied first
				}
				c.Offer(k, 1, tableBytes(k, 1))
			}
			settle(c)
			for i := range 50 {
				k := Key{Image: 1, Kind: kindL2, Off: int64(i) << 16}
				if _, ok := c.Get(k, 1); ok {
					t.Fatalf("table %d: the late older copy was served", i)
				}
				b, ok := c.Get(k, 2)
				if !ok {
					t.Fatalf("table %d: the newer copy was lost to the late older one", i)
				}
				if err := checkBytes(k, 2, b); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestCleanFillSharesOneLoad(t *testing.T) {
	for _, impl := range cleanImpls {
		t.Run(impl.name, func(t *testing.T) {
			c := impl.new(t, 1<<20)
			k := Key{Image: 1, Kind: kindL2, Off: 0x90000}
			var loads atomic.Int64
			gate := make(chan struct{})
			load := func(k Key) ([]byte, error) {
				loads.Add(1)
				<-gate
				return tableBytes(k, 4), nil
			}
			var wg sync.WaitGroup
			errs := make(chan error, 8)
			for range 8 {
				wg.Go(func() {
					b, err := c.Fill(k, 4, load)
					if err == nil {
						err = checkBytes(k, 4, b)
					}
					if err != nil {
						errs <- err
					}
				})
			}
			for loads.Load() == 0 {
				runtime.Gosched()
			}
			time.Sleep(20 * time.Millisecond) // let the others queue behind it
			close(gate)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if n := loads.Load(); n != 1 {
				t.Fatalf("%d loads for one table, want 1", n)
			}
			if st := c.Stats(); st.Fills != 1 || st.Joined+st.Hits != 7 {
				t.Fatalf("stats %+v, want 1 fill and 7 joined or hits", st)
			}
		})
	}
}

func TestCleanFillError(t *testing.T) {
	for _, impl := range cleanImpls {
		t.Run(impl.name, func(t *testing.T) {
			c := impl.new(t, 1<<20)
			k := Key{Image: 1, Kind: kindL2, Off: 0x90000}
			_, err := c.Fill(k, 1, func(Key) ([]byte, error) { return nil, errLoad })
			if !errors.Is(err, errLoad) {
				t.Fatalf("Fill: %v, want the load error", err)
			}
			settle(c)
			if _, ok := c.Get(k, 1); ok {
				t.Fatal("a failed fill left an entry")
			}
			b, err := c.Fill(k, 1, func(k Key) ([]byte, error) { return tableBytes(k, 1), nil })
			if err != nil {
				t.Fatal(err)
			}
			if err := checkBytes(k, 1, b); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSharedTinyBudgetStillCorrect forces ristretto to reject and evict
// almost everything (a budget of 4 tables against a zipf stream over 500)
// and checks that every answer is still the right table.
func TestSharedTinyBudgetStillCorrect(t *testing.T) {
	s, err := NewShared(CleanConfig{MaxBytes: 4 * 64, TableSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := rand.New(rand.NewPCG(1, 2))
	z := rand.NewZipf(r, 1.1, 1, 499)
	gens := make([]uint64, 500) // the authoritative generations
	for i := range 20000 {
		idx := z.Uint64()
		if i%97 == 0 {
			gens[idx] = uint64(i) // a modification: every copy so far is stale
		}
		k := Key{Image: 5, Kind: kindL2, Off: int64(idx) << 16}
		gen := gens[idx]
		b, err := s.Fill(k, gen, func(k Key) ([]byte, error) { return tableBytes(k, gen), nil })
		if err != nil {
			t.Fatal(err)
		}
		if err := checkBytes(k, gen, b); err != nil {
			t.Fatalf("access %d: %v", i, err)
		}
		if i%1000 == 0 {
			s.c.Wait()
		}
	}
	s.c.Wait()
	st := s.Stats()
	t.Logf("stats %+v", st)
	if st.Rejected+st.Dropped == 0 {
		t.Fatal("the budget was meant to force rejections, but none happened")
	}
	if st.Evictions == 0 || st.Hits == 0 {
		t.Fatalf("stats %+v: want some evictions and some hits", st)
	}
}

func TestLRUOrderAndBudget(t *testing.T) {
	l := NewLRU(3 * 64)
	k := func(i int) Key { return Key{Image: 1, Kind: kindL2, Off: int64(i) << 16} }
	for i := range 3 {
		l.Offer(k(i), 1, tableBytes(k(i), 1))
	}
	l.Get(k(0), 1) // 1 becomes the LRU
	l.Offer(k(3), 1, tableBytes(k(3), 1))
	var got string
	for i := range 4 {
		if _, ok := l.Get(k(i), 1); ok {
			got += fmt.Sprint(i)
		} else {
			got += "-"
		}
	}
	if got != "0-23" {
		t.Fatalf("resident %q, want 0-23", got)
	}
	l.Offer(k(9), 1, make([]byte, 4*64))
	if _, ok := l.Get(k(9), 1); ok {
		t.Fatal("a table larger than the budget was cached")
	}
	st := l.Stats()
	if st.Evictions != 1 || st.Rejected != 1 || st.Resident != 3 {
		t.Fatalf("stats %+v, want 1 eviction, 1 rejected, 3 resident", st)
	}
	l.Close()
	if _, ok := l.Get(k(0), 1); ok {
		t.Fatal("hit after Close")
	}
	l.Offer(k(0), 1, tableBytes(k(0), 1))
	if _, ok := l.Get(k(0), 1); ok {
		t.Fatal("Offer after Close was kept")
	}
}

// TestLRULoopLargerThanCacheNeverHits pins the LRU's exactness: a loop over
// one table more than fits misses every time.
func TestLRULoopLargerThanCacheNeverHits(t *testing.T) {
	l := NewLRU(64 * 64)
	load := func(k Key) ([]byte, error) { return tableBytes(k, 0), nil }
	for i := range 65 * 20 {
		if _, err := l.Fill(Key{Image: 1, Off: int64(i%65) << 16}, 0, load); err != nil {
			t.Fatal(err)
		}
	}
	if st := l.Stats(); st.Hits != 0 || st.Misses != 65*20 {
		t.Fatalf("stats %+v, want 0 hits", st)
	}
}

func TestCleanHitDoesNotAllocate(t *testing.T) {
	for _, impl := range cleanImpls {
		t.Run(impl.name, func(t *testing.T) {
			c := impl.new(t, 1<<20)
			var keys [16]Key
			for i := range keys {
				keys[i] = Key{Image: 1, Kind: kindL2, Off: int64(i) << 16}
				c.Offer(keys[i], 3, tableBytes(keys[i], 3))
			}
			settle(c)
			i := 0
			allocs := testing.AllocsPerRun(2000, func() {
				if _, ok := c.Get(keys[i%len(keys)], 3); !ok {
					panic("miss on a resident table")
				}
				i++
			})
			if allocs != 0 {
				t.Fatalf("a tier-2 hit allocates %.2f times, want 0", allocs)
			}
			// Fill on a hit takes the same path.
			load := func(k Key) ([]byte, error) { return nil, errLoad }
			allocs = testing.AllocsPerRun(2000, func() {
				if _, err := c.Fill(keys[i%len(keys)], 3, load); err != nil {
					panic(err)
				}
				i++
			})
			if allocs != 0 {
				t.Fatalf("Fill on a hit allocates %.2f times, want 0", allocs)
			}
		})
	}
}

// TestCleanConcurrent hammers Get, Fill and Offer from several goroutines
// with generations moving underneath; run it under -race.
func TestCleanConcurrent(t *testing.T) {
	for _, impl := range cleanImpls {
		t.Run(impl.name, func(t *testing.T) {
			c := impl.new(t, 32*64)
			var gens [64]atomic.Uint64
			var wg sync.WaitGroup
			var bad atomic.Int64
			for g := range 4 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(g), 9))
					for range 3000 {
						idx := r.IntN(64)
						k := Key{Image: 1, Kind: kindL2, Off: int64(idx) << 16}
						if r.IntN(50) == 0 {
							gens[idx].Add(1)
						}
						gen := gens[idx].Load()
						b, err := c.Fill(k, gen, func(k Key) ([]byte, error) { return tableBytes(k, gen), nil })
						if err != nil || checkBytes(k, gen, b) != nil {
							bad.Add(1)
						}
						if r.IntN(10) == 0 {
							c.Offer(k, gen, tableBytes(k, gen))
						}
					}
				})
			}
			wg.Wait()
			if n := bad.Load(); n != 0 {
				t.Fatalf("%d wrong answers", n)
			}
		})
	}
}

func TestSharedCloseStopsGoroutines(t *testing.T) {
	before := quietGoroutines()
	for i := range 5 {
		s, err := NewShared(CleanConfig{MaxBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 && runtime.NumGoroutine() <= before {
			t.Fatal("NewShared started no goroutine; the test measures nothing")
		}
		k := Key{Image: 1, Off: 0x10000}
		s.Offer(k, 1, tableBytes(k, 1))
		s.Close()
		s.Close() // idempotent
		if _, ok := s.Get(k, 1); ok {
			t.Fatal("hit after Close")
		}
		if _, err := s.Fill(k, 2, func(k Key) ([]byte, error) { return tableBytes(k, 2), nil }); !errors.Is(err, ErrClosed) {
			t.Fatalf("Fill after Close: %v, want ErrClosed", err)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after Close:\n%s",
				before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNewCleanPolicies(t *testing.T) {
	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{PolicyDefault, fmt.Sprintf("%T", map[Policy]any{PolicyLRU: &LRU{}, PolicyTinyLFU: &Shared{}}[defaultPolicy])},
		{PolicyLRU, "*cache.LRU"},
		{PolicyTinyLFU, "*cache.Shared"},
	} {
		c, err := NewClean(CleanConfig{MaxBytes: 1 << 20, Policy: tc.p})
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%T", c); got != tc.want {
			t.Errorf("policy %d: %s, want %s", tc.p, got, tc.want)
		}
		c.Close()
	}
	if _, err := NewClean(CleanConfig{MaxBytes: 0}); err == nil {
		t.Error("NewClean accepted a zero budget")
	}
	if _, err := NewClean(CleanConfig{MaxBytes: 1, Policy: 99}); err == nil {
		t.Error("NewClean accepted an unknown policy")
	}
}

// TestRawKeyInjectiveAndMixed checks the key fold and the mixer: distinct
// tables of many images get distinct raw keys, and mixed offsets spread over
// ristretto's 256 shards where raw offsets (multiples of 64 KiB) would all
// land in shard 0.
func TestRawKeyInjectiveAndMixed(t *testing.T) {
	seen := make(map[uint64]Key)
	for img := ImageID(1); img <= 300; img += 7 {
		for kind := range Kind(3) {
			for i := range 200 {
				k := Key{Image: img, Kind: kind, Off: int64(i)<<16 + 0x30000}
				r := k.rawKey()
				if prev, ok := seen[r]; ok {
					t.Fatalf("raw key collision: %+v and %+v", prev, k)
				}
				seen[r] = k
			}
		}
	}
	var shards, rawShards [256]int
	for i := range 4096 {
		raw := Key{Image: 1, Kind: kindL2, Off: int64(i) << 16}.rawKey()
		h, conflict := mixKeyToHash(raw)
		if conflict == h || conflict == 0 {
			t.Fatalf("conflict hash %x not independent of %x", conflict, h)
		}
		shards[h%256]++
		rawShards[raw%256]++
	}
	mn, mx := 1<<30, 0
	for _, n := range shards {
		mn, mx = min(mn, n), max(mx, n)
	}
	// 16 per shard on average; a decent mixer stays within a few sigma.
	if mn < 2 || mx > 40 {
		t.Fatalf("mixed keys spread %d..%d per shard over 256 shards", mn, mx)
	}
	if rawShards[0] != 4096 {
		t.Fatalf("premise: raw 64 KiB-aligned keys should all be in shard 0, got %d", rawShards[0])
	}
}

func TestNewImageIDUnique(t *testing.T) {
	a, b := NewImageID(), NewImageID()
	if a == 0 || b == 0 || a == b {
		t.Fatalf("NewImageID returned %d and %d", a, b)
	}
}

// quietGoroutines waits for goroutines left by earlier tests (ristretto's
// exit asynchronously after Close) and returns the settled count.
func quietGoroutines() int {
	n := runtime.NumGoroutine()
	for range 100 {
		time.Sleep(10 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			return n
		}
		n = m
	}
	return n
}
