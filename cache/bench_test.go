package cache

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// The benchmarks behind docs/design/metadata-cache.md:
//
//	go test -run '^$' -bench . -benchmem ./cache/
//
// BenchmarkCleanHitRatio replays a trace of table accesses through Fill (a
// miss "loads" a shared buffer: no I/O, so ns/op is the cache's own cost per
// access, misses included) and reports the hit ratio. BenchmarkCleanHit is
// the cost of a hit alone, BenchmarkSetHit the same for tier 1.

const (
	benchTableSize = 4 << 10 // an L2 slice
	benchTables    = 64      // cache capacity in tables
	traceLen       = 20000
)

// benchBuf is the table every miss "loads": contents do not matter here.
var benchBuf = make([]byte, benchTableSize)

// traceKey places table i like qcow2 places L2 tables: at 64 KiB cluster
// offsets, which is what makes raw integer keys collide in ristretto.
func traceKey(i int) Key { return Key{Image: 1, Kind: kindL2, Off: 0x30000 + int64(i)<<16} }

// workloads are the traces of qcow2.md §4.2, deterministic per seed.
var workloads = []struct {
	name  string
	trace func() []Key
}{
	{"fits48", func() []Key { // 48 tables, uniform: fits the cache
		r := rand.New(rand.NewPCG(1, 1))
		return genTrace(func(int) int { return r.IntN(48) })
	}},
	{"zipf1.1", func() []Key { // zipf(1.1) over 1000 tables
		z := rand.NewZipf(rand.New(rand.NewPCG(2, 2)), 1.1, 1, 999)
		return genTrace(func(int) int { return int(z.Uint64()) })
	}},
	{"loop80", func() []Key { // a loop just larger than the cache
		return genTrace(func(i int) int { return i % 80 })
	}},
	{"hot32+scan", func() []Key { // every other access a 32-table hot set, else a sequential scan
		r := rand.New(rand.NewPCG(3, 3))
		scan := 0
		return genTrace(func(i int) int {
			if i%2 == 0 {
				return r.IntN(32)
			}
			scan++
			return 1000 + scan
		})
	}},
	{"phase48", func() []Key { // a new 48-table working set every 5000 accesses
		r := rand.New(rand.NewPCG(4, 4))
		return genTrace(func(i int) int { return (i/5000)*1000 + r.IntN(48) })
	}},
}

func genTrace(next func(i int) int) []Key {
	t := make([]Key, traceLen)
	for i := range t {
		t[i] = traceKey(next(i))
	}
	return t
}

// benchImpls are the candidates: ristretto with our mixing KeyToHash (the
// Shared type as shipped), ristretto with its default identity hash on the
// same raw keys, ristretto with a Wait after every fill (its best case: a
// filled table is visible at once), and the exact LRU.
var benchImpls = []struct {
	name string
	new  func(b *testing.B) Clean
}{
	{"tinylfu-mix", func(b *testing.B) Clean { return newBenchShared(b, mixKeyToHash, false) }},
	{"tinylfu-ident", func(b *testing.B) Clean { return newBenchShared(b, nil, false) }},
	{"tinylfu-mix-wait", func(b *testing.B) Clean { return newBenchShared(b, mixKeyToHash, true) }},
	{"lru", func(b *testing.B) Clean { return NewLRU(benchTables * benchTableSize) }},
}

func newBenchShared(b *testing.B, keyToHash func(uint64) (uint64, uint64), wait bool) Clean {
	s, err := newShared(CleanConfig{MaxBytes: benchTables * benchTableSize, TableSize: benchTableSize}, keyToHash)
	if err != nil {
		b.Fatal(err)
	}
	s.waitSet = wait
	b.Cleanup(s.Close)
	return s
}

func benchLoad(Key) ([]byte, error) { return benchBuf, nil }

func BenchmarkCleanHitRatio(b *testing.B) {
	for _, w := range workloads {
		trace := w.trace()
		for _, impl := range benchImpls {
			b.Run(w.name+"/"+impl.name, func(b *testing.B) {
				c := impl.new(b)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := c.Fill(trace[i%len(trace)], 0, benchLoad); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				st := c.Stats()
				b.ReportMetric(st.HitRatio(), "hit-ratio")
			})
		}
	}
}

// BenchmarkCleanHit measures a hit on 32 resident tables, on one goroutine
// and on GOMAXPROCS goroutines.
func BenchmarkCleanHit(b *testing.B) {
	for _, impl := range benchImpls {
		if impl.name == "tinylfu-mix-wait" {
			continue // same Get as tinylfu-mix
		}
		for _, parallel := range []bool{false, true} {
			name := impl.name
			if parallel {
				name += "/parallel"
			}
			b.Run(name, func(b *testing.B) {
				c := impl.new(b)
				var keys [32]Key
				for i := range keys {
					keys[i] = traceKey(i)
					c.Offer(keys[i], 1, benchBuf)
				}
				settle(c)
				for _, k := range keys {
					if _, ok := c.Get(k, 1); !ok {
						b.Fatalf("table %+v not resident after settling", k)
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				if !parallel {
					for i := 0; i < b.N; i++ {
						if _, ok := c.Get(keys[i%len(keys)], 1); !ok {
							b.Fatal("miss")
						}
					}
					return
				}
				b.RunParallel(func(pb *testing.PB) {
					i := 0
					for pb.Next() {
						if _, ok := c.Get(keys[i%len(keys)], 1); !ok {
							panic("miss")
						}
						i++
					}
				})
			})
		}
	}
}

// BenchmarkSetHit is a tier-1 hit: Get, read under RLock, Unpin.
func BenchmarkSetHit(b *testing.B) {
	for _, parallel := range []bool{false, true} {
		b.Run(fmt.Sprintf("parallel=%t", parallel), func(b *testing.B) {
			s, err := NewSet(Config{Tables: benchTables, TableSize: benchTableSize, Load: func(Key, []byte) error { return nil }})
			if err != nil {
				b.Fatal(err)
			}
			var keys [32]Key
			for i := range keys {
				keys[i] = traceKey(i)
				t, err := s.Get(keys[i])
				if err != nil {
					b.Fatal(err)
				}
				t.Unpin()
			}
			hit := func(k Key) {
				t, err := s.Get(k)
				if err != nil {
					panic(err)
				}
				t.RLock()
				_ = t.Data()[0]
				t.RUnlock()
				t.Unpin()
			}
			b.ReportAllocs()
			b.ResetTimer()
			if !parallel {
				for i := 0; i < b.N; i++ {
					hit(keys[i%len(keys)])
				}
				return
			}
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					hit(keys[i%len(keys)])
					i++
				}
			})
		})
	}
}
