package cache

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

func viewSet(t *testing.T, tables, size int) *Set {
	t.Helper()
	s, err := NewSet(Config{Tables: tables, TableSize: size, Load: func(Key, []byte) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func beWords(ws ...uint64) []byte {
	b := make([]byte, 8*len(ws))
	for i, w := range ws {
		binary.BigEndian.PutUint64(b[8*i:], w)
	}
	return b
}

// TestSetViewFollowsTable: View finds an inserted table and reads its
// words; a SetWord, a discard or an eviction fails Valid for a reader that
// looked before it, and a discarded key is no longer found.
func TestSetViewFollowsTable(t *testing.T) {
	s := viewSet(t, 2, 16)
	k := Key{Image: 1, Kind: 1, Off: 4096}
	tb, err := s.Insert(k, beWords(7, 9))
	if err != nil {
		t.Fatal(err)
	}
	v, seq, ok := s.View(k)
	if !ok || v != tb || v.Word(0) != 7 || v.Word(1) != 9 || !v.Valid(seq) {
		t.Fatalf("View after Insert: ok %t, words %d %d", ok, v.Word(0), v.Word(1))
	}
	tb.SetWord(1, 11)
	if v.Valid(seq) {
		t.Error("Valid after a SetWord")
	}
	if tb.Word(1) != 11 || binary.BigEndian.Uint64(tb.Data()[8:]) != 11 {
		t.Error("SetWord did not store big endian")
	}
	_, seq, _ = s.View(k)
	tb.Unpin()
	if !s.Discard(k) {
		t.Fatal("Discard missed")
	}
	if tb.Valid(seq) {
		t.Error("Valid after Discard")
	}
	if _, _, ok := s.View(k); ok {
		t.Error("View found a discarded key")
	}
	// Eviction: fill both slots, view one, push it out.
	a, b, c := Key{Off: 1}, Key{Off: 2}, Key{Off: 3}
	for _, k := range []Key{a, b} {
		tb, err := s.Insert(k, beWords(uint64(k.Off)))
		if err != nil {
			t.Fatal(err)
		}
		tb.Unpin()
	}
	va, seqA, ok := s.View(a)
	if !ok {
		t.Fatal("View(a) missed")
	}
	tb, err = s.Insert(c, nil) // evicts a, the least recently used
	if err != nil {
		t.Fatal(err)
	}
	tb.Unpin()
	if _, _, ok := s.View(a); ok || va.Valid(seqA) {
		t.Errorf("evicted table still viewable (found %t, valid %t)", ok, va.Valid(seqA))
	}
}

// TestSetIndexAgainstModel: random inserts and discards over colliding keys
// keep the open-addressing index equal to a map: every resident key is
// found by View and Lookup in its own slot, every other key by neither.
func TestSetIndexAgainstModel(t *testing.T) {
	const tables = 16
	s := viewSet(t, tables, 8)
	model := map[Key]bool{}
	rng := rand.New(rand.NewPCG(1, 2))
	for step := range 5000 {
		k := Key{Image: ImageID(rng.IntN(2)), Kind: 1, Off: int64(rng.IntN(40)) * 512}
		if model[k] || (len(model) == tables && rng.IntN(2) == 0) {
			if model[k] {
				if !s.Discard(k) {
					t.Fatalf("step %d: Discard(%+v) missed a resident key", step, k)
				}
				delete(model, k)
			}
		} else if len(model) < tables {
			tb, err := s.Insert(k, beWords(uint64(k.Off)))
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			tb.Unpin()
			model[k] = true
		}
		for off := int64(0); off < 40*512; off += 512 {
			for img := range ImageID(2) {
				k := Key{Image: img, Kind: 1, Off: off}
				v, seq, ok := s.View(k)
				if ok != model[k] {
					t.Fatalf("step %d: View(%+v) = %t, model %t", step, k, ok, model[k])
				}
				if ok && (v.Word(0) != uint64(off) || !v.Valid(seq) || v.Key() != k) {
					t.Fatalf("step %d: View(%+v) returned table %+v", step, k, v.Key())
				}
				if tb, ok := s.Lookup(k); ok != model[k] {
					t.Fatalf("step %d: Lookup(%+v) = %t, model %t", step, k, ok, model[k])
				} else if ok {
					tb.Unpin()
				}
			}
		}
	}
	if st := s.Stats(); st.Resident != int64(len(model)) {
		t.Fatalf("Resident %d, model %d", st.Resident, len(model))
	}
}

// TestSetReferencedSecondChance: a table marked Referenced (a lock-free
// hit) is not the eviction victim even at the tail of the LRU list.
func TestSetReferencedSecondChance(t *testing.T) {
	s := viewSet(t, 3, 8)
	keys := []Key{{Off: 1}, {Off: 2}, {Off: 3}}
	for _, k := range keys {
		tb, err := s.Insert(k, nil)
		if err != nil {
			t.Fatal(err)
		}
		tb.Unpin()
	}
	v, _, _ := s.View(keys[0]) // the tail
	v.Referenced()
	tb, err := s.Insert(Key{Off: 4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tb.Unpin()
	if got := residents(s, keys...); got != "0-2" {
		t.Fatalf("residents %q after one eviction, want 0-2 (key 1, unreferenced, out)", got)
	}
}

// TestSetViewConcurrent: readers View, read both words and check Valid
// while a writer inserts, evicts, discards and rewrites tables. A read that
// Valid accepts has both words equal to its key's offset and generation
// pair (each rewrite is one BeginWrite/EndWrite); anything else is a torn or foreign table that Valid let through.
func TestSetViewConcurrent(t *testing.T) {
	const tables, keys = 4, 12
	s := viewSet(t, tables, 16)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var checked atomic.Int64
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 7))
			for !stop.Load() {
				k := Key{Kind: 1, Off: int64(rng.IntN(keys)+1) * 4096}
				v, seq, ok := s.View(k)
				if !ok {
					continue
				}
				w0, w1 := v.Word(0), v.Word(1)
				if !v.Valid(seq) {
					continue
				}
				if w0>>32 != uint64(k.Off) || w0 != w1 {
					t.Errorf("valid view of %+v read %#x %#x", k, w0, w1)
					return
				}
				checked.Add(1)
			}
		}()
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for i := range 20000 {
		k := Key{Kind: 1, Off: int64(rng.IntN(keys)+1) * 4096}
		g := uint64(i)
		w := uint64(k.Off)<<32 | g&0xffffffff
		switch rng.IntN(3) {
		case 0:
			s.Discard(k)
		default:
			tb, err := s.Insert(k, beWords(w, w))
			if err != nil {
				continue
			}
			tok := tb.BeginWrite()
			tb.SetWord(0, w)
			tb.SetWord(1, w)
			tb.EndWrite(tok)
			tb.Unpin()
		}
	}
	stop.Store(true)
	wg.Wait()
	if checked.Load() == 0 {
		t.Log("no reader ever saw a valid view")
	}
}

// TestSetViewNoAlloc: a View hit, its reads and Valid allocate nothing.
func TestSetViewNoAlloc(t *testing.T) {
	s := viewSet(t, 2, 16)
	k := Key{Off: 8}
	tb, _ := s.Insert(k, beWords(1, 2))
	tb.Unpin()
	if a := testing.AllocsPerRun(100, func() {
		v, seq, ok := s.View(k)
		if !ok || v.Word(1) != 2 || !v.Valid(seq) {
			t.Fatal("miss")
		}
		v.Referenced()
	}); a != 0 {
		t.Fatalf("View hit allocates %.1f", a)
	}
}
