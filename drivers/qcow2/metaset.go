package qcow2

import "sync/atomic"

// metaSet holds the host offsets of every refcount block and active L2
// table, for the overlap check (R5): changed under Driver.mu, read without
// a lock by in-place writes (writeFast). Open addressing with linear
// probing over atomic cells (0: empty; cluster 0 is the header, never in
// the set); the table doubles when half full and is republished whole, so
// a reader sees either the old table or the new one. A removal publishes a
// copy too, so no member is ever missing from the table a reader holds.
type metaSet struct {
	tab atomic.Pointer[metaTable]
}

type metaTable struct {
	cells []atomic.Int64
	mask  uint64
	n     int
}

func newMetaTable(n int) *metaTable {
	c := 16
	for c < 2*n {
		c <<= 1
	}
	return &metaTable{cells: make([]atomic.Int64, c), mask: uint64(c - 1)}
}

func metaHome(off int64, mask uint64) uint64 {
	x := uint64(off)
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return x & mask
}

// has reports whether off is in the set. No lock, no allocation.
func (s *metaSet) has(off int64) bool {
	t := s.tab.Load()
	if t == nil {
		return false
	}
	for i, p := uint64(0), metaHome(off, t.mask); i <= t.mask; i, p = i+1, (p+1)&t.mask {
		switch t.cells[p].Load() {
		case 0:
			return false
		case off:
			return true
		}
	}
	return false
}

// reset empties the set. REQUIRES: mu held.
func (s *metaSet) reset() { s.tab.Store(newMetaTable(0)) }

// add puts off in the set. REQUIRES: mu held.
func (s *metaSet) add(off int64) {
	t := s.tab.Load()
	if t == nil {
		t = newMetaTable(0)
		s.tab.Store(t)
	}
	if s.has(off) {
		return
	}
	if 2*(t.n+1) > len(t.cells) {
		nt := newMetaTable(t.n + 1)
		for i := range t.cells {
			if c := t.cells[i].Load(); c != 0 {
				nt.put(c)
			}
		}
		s.tab.Store(nt)
		t = nt
	}
	t.put(off)
}

func (t *metaTable) put(off int64) {
	p := metaHome(off, t.mask)
	for t.cells[p].Load() != 0 {
		p = (p + 1) & t.mask
	}
	t.cells[p].Store(off)
	t.n++
}

// del removes off by publishing a copy without it, so that a reader never
// misses another member while the table changes. Deletions are rare (an
// L2 table copied away from a snapshot, a revert). REQUIRES: mu held.
func (s *metaSet) del(off int64) {
	t := s.tab.Load()
	if t == nil || !s.has(off) {
		return
	}
	nt := newMetaTable(t.n)
	for i := range t.cells {
		if c := t.cells[i].Load(); c != 0 && c != off {
			nt.put(c)
		}
	}
	s.tab.Store(nt)
}
