package cache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"
)

func tableOf(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// TestSetInsertCopiesAndResidentWins: Insert copies the caller's bytes
// (zeroing the rest), pins the table, and leaves a resident table alone.
func TestSetInsertCopiesAndResidentWins(t *testing.T) {
	s := newTestSet(t, 2, &fakeDisk{})
	src := tableOf(0xaa, 10)
	tb, err := s.Insert(l2(1), src)
	if err != nil {
		t.Fatal(err)
	}
	want := append(tableOf(0xaa, 10), make([]byte, 6)...)
	if !bytes.Equal(tb.Data(), want) {
		t.Fatalf("inserted bytes %x, want %x", tb.Data(), want)
	}
	src[0] = 0 // the set holds a copy
	if tb.Data()[0] != 0xaa {
		t.Fatal("Insert kept the caller's slice instead of copying it")
	}
	if st := s.Stats(); st.Pinned != 1 || st.Fills != 1 || st.Misses != 0 {
		t.Fatalf("stats after Insert %+v, want 1 pinned, 1 fill, 0 misses", st)
	}
	tb2, err := s.Insert(l2(1), tableOf(0xbb, 16))
	if err != nil || tb2 != tb || tb2.Data()[0] != 0xaa {
		t.Fatalf("second Insert of a resident key: %v, same table %t, byte %#x", err, tb2 == tb, tb2.Data()[0])
	}
	tb.Unpin()
	tb2.Unpin()
	if st := s.Stats(); st.Pinned != 0 || st.Fills != 1 {
		t.Fatalf("stats %+v, want nothing pinned and still 1 fill", st)
	}
	if _, err := s.Insert(l2(2), make([]byte, 17)); err == nil {
		t.Fatal("Insert of more than TableSize bytes succeeded")
	}
}

// TestSetInsertEvictsAndFull: Insert evicts the least recently used clean
// table through the Evicted hook and fails with ErrFull when every slot is
// pinned or dirty, without growing.
func TestSetInsertEvictsAndFull(t *testing.T) {
	var evicted []Key
	s, err := NewSet(Config{Tables: 2, TableSize: 16, Load: (&fakeDisk{}).load, Evicted: func(k Key, data []byte) {
		if data[0] != byte(k.Off>>16) {
			t.Errorf("Evicted(%+v) saw byte %#x", k, data[0])
		}
		evicted = append(evicted, k)
	}})
	if err != nil {
		t.Fatal(err)
	}
	ins := func(i int) *Table {
		t.Helper()
		tb, err := s.Insert(l2(i), []byte{byte(i)})
		if err != nil {
			t.Fatalf("Insert(%d): %v", i, err)
		}
		return tb
	}
	ins(1).Unpin()
	ins(2).Unpin()
	ins(3).Unpin()
	if len(evicted) != 1 || evicted[0] != l2(1) {
		t.Fatalf("evicted %+v, want table 1", evicted)
	}
	a, b := ins(4), ins(5) // evicts 2 and 3; both pinned now
	a.MarkDirty(1)
	b.Unpin()
	b = ins(5)
	if _, err := s.Insert(l2(6), nil); !errors.Is(err, ErrFull) {
		t.Fatalf("Insert with every slot dirty or pinned: %v, want ErrFull", err)
	}
	if st := s.Stats(); st.Full != 1 || st.Resident != 2 || s.Available() != 0 {
		t.Fatalf("stats %+v available %d, want 1 full, 2 resident, 0 available", st, s.Available())
	}
	b.Unpin()
	if s.Available() != 1 {
		t.Fatalf("available %d after unpinning a clean table, want 1", s.Available())
	}
	a.Unpin()
}

// TestSetPeekRefreshesLRU: Peek does not pin, counts, and makes the table
// the most recently used, so it is evicted last.
func TestSetPeekRefreshesLRU(t *testing.T) {
	s := newTestSet(t, 2, &fakeDisk{})
	for _, i := range []int{1, 2} {
		tb, err := s.Insert(l2(i), nil)
		if err != nil {
			t.Fatal(err)
		}
		tb.Unpin()
	}
	if _, ok := s.Peek(l2(1)); !ok {
		t.Fatal("Peek missed a resident table")
	}
	if _, ok := s.Peek(l2(9)); ok {
		t.Fatal("Peek hit an absent table")
	}
	if _, ok := s.Resident(l2(2)); !ok {
		t.Fatal("Resident missed a resident table")
	}
	if st := s.Stats(); st.Hits != 1 || st.Misses != 1 || st.Pinned != 0 {
		t.Fatalf("stats %+v, want 1 hit, 1 miss (Resident uncounted), nothing pinned", st)
	}
	// Resident refreshed 2 after Peek refreshed 1: 1 is the LRU victim.
	tb, err := s.Insert(l2(3), nil)
	if err != nil {
		t.Fatal(err)
	}
	tb.Unpin()
	if got := residents(s, l2(1), l2(2), l2(3)); got != "-12" {
		t.Fatalf("resident %q, want table 1 evicted", got)
	}
	if tb, _ := s.Peek(l2(2)); tb == nil || !s.Pin(tb) {
		t.Fatal("Pin of a peeked resident table failed")
	} else if s.Stats().Pinned != 1 {
		t.Fatal("Pin did not pin")
	} else {
		tb.Unpin()
	}
}

// TestSetDiscardPinnedOrphans: a pinned table can be discarded; it leaves
// the index at once, a new table may take its key, its holder keeps the
// bytes, MarkDirty on it is ignored, and its slot comes back at Unpin.
func TestSetDiscardPinnedOrphans(t *testing.T) {
	s := newTestSet(t, 2, &fakeDisk{})
	old, err := s.Insert(l2(1), tableOf(1, 16))
	if err != nil {
		t.Fatal(err)
	}
	old.MarkDirty(1)
	if !s.Discard(l2(1)) {
		t.Fatal("Discard of a pinned dirty table returned false")
	}
	if _, ok := s.Peek(l2(1)); ok {
		t.Fatal("a discarded table is still found")
	}
	if s.Pin(old) {
		t.Fatal("Pin of a discarded table succeeded")
	}
	old.MarkDirty(1) // ignored: the table is gone
	nt, err := s.Insert(l2(1), tableOf(2, 16))
	if err != nil {
		t.Fatal(err)
	}
	if nt == old || old.Data()[0] != 1 || nt.Data()[0] != 2 {
		t.Fatal("the new table under the key shares the discarded one's slot or bytes")
	}
	nt.Unpin()
	if st := s.Stats(); st.Dirty != 0 || st.Resident != 1 || s.Available() != 1 {
		t.Fatalf("stats %+v available %d, want nothing dirty, 1 resident, 1 available", st, s.Available())
	}
	var f flushLog
	if err := s.Flush(f.writeBack, f.barrier); err != nil || len(f.events) != 0 {
		t.Fatalf("Flush wrote a discarded table: %v %v", f.events, err)
	}
	old.Unpin()
	if s.Available() != 2 {
		t.Fatalf("available %d after the orphan's last Unpin, want 2", s.Available())
	}
	// Both slots usable, no eviction needed for a second key.
	tb, err := s.Insert(l2(2), nil)
	if err != nil {
		t.Fatal(err)
	}
	tb.Unpin()
	if st := s.Stats(); st.Evictions != 0 {
		t.Fatalf("%d evictions: the orphan's slot was not freed", st.Evictions)
	}
}

// TestSetGetWaitsForInsert: a Get of a key that an Insert is filling waits
// for it (it must not load the key a second time).
func TestSetGetWaitsForInsert(t *testing.T) {
	d := &fakeDisk{}
	release := make(chan struct{})
	entered := make(chan struct{})
	var s *Set
	var err error
	s, err = NewSet(Config{Tables: 1, TableSize: 16, Load: d.load, Evicted: func(Key, []byte) {
		close(entered)
		<-release
	}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Insert(l2(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	first.Unpin()
	done := make(chan *Table)
	go func() {
		tb, err := s.Insert(l2(2), tableOf(7, 16)) // blocks in Evicted
		if err != nil {
			t.Error(err)
		}
		done <- tb
	}()
	<-entered
	got := make(chan *Table)
	go func() {
		tb, err := s.Get(l2(2))
		if err != nil {
			t.Error(err)
		}
		got <- tb
	}()
	select {
	case <-got:
		t.Fatal("Get returned while the Insert of its key was still filling")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	ins := <-done
	tb := <-got
	if tb != ins || tb.Data()[0] != 7 || d.loads.Load() != 0 {
		t.Fatalf("Get got table %p byte %#x after %d loads, want the inserted one and no load", tb, tb.Data()[0], d.loads.Load())
	}
	tb.Unpin()
	ins.Unpin()
}

// TestCleanContains: Contains matches key and generation, refreshes the
// entry's recency and is not counted as a lookup.
func TestCleanContains(t *testing.T) {
	l := NewLRU(32)
	k1, k2, k3 := l2(1), l2(2), l2(3)
	l.Offer(k1, 5, make([]byte, 16))
	l.Offer(k2, 5, make([]byte, 16))
	if !l.Contains(k1, 5) || l.Contains(k1, 4) || l.Contains(k3, 5) {
		t.Fatal("Contains answered wrongly")
	}
	if st := l.Stats(); st.Hits != 0 || st.Misses != 0 {
		t.Fatalf("Contains was counted: %+v", st)
	}
	l.Offer(k3, 1, make([]byte, 16)) // evicts the LRU: k2, since k1 was just used
	if !l.Contains(k1, 5) || l.Contains(k2, 5) {
		t.Fatal("Contains did not refresh recency")
	}

	sh, err := NewShared(CleanConfig{MaxBytes: 1 << 20, TableSize: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	data := make([]byte, 16)
	binary.LittleEndian.PutUint64(data, 1)
	for i := 0; i < 100 && !sh.Contains(k1, 5); i++ {
		sh.Offer(k1, 5, data)
		sh.c.Wait()
	}
	if !sh.Contains(k1, 5) || sh.Contains(k1, 6) || sh.Contains(k2, 5) {
		t.Fatal("Shared.Contains answered wrongly")
	}
}
