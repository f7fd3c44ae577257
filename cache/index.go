package cache

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

// slotIndex is a Set's only index: key → slot, open addressing with linear
// probing over atomic cells holding slot+1 (0: empty). It is changed only
// under Set.mu and read there to decide; View reads it without any lock.
//
// A lock-free reader racing a change may miss a key that is resident (a
// removal shifted it back past the reader) or reach a slot that now holds
// another key: the table's sequence and key, checked by View and again by
// Table.Valid, turn both into a miss, never a wrong table. A caller that
// missed falls back to the locked path, which sees the index whole.
type slotIndex struct {
	cells []atomic.Int32
	mask  uint64
	n     int // cells in use
}

func newSlotIndex(tables int) slotIndex {
	n := 2
	for n < 2*tables {
		n <<= 1
	}
	return slotIndex{cells: make([]atomic.Int32, n), mask: uint64(n - 1)}
}

func (x *slotIndex) home(k Key) uint64 { return mix64(k.rawKey()) & x.mask }

// get returns the slot of key. REQUIRES: s.mu held.
func (x *slotIndex) get(s *Set, key Key) (int32, bool) {
	for i, p := uint64(0), x.home(key); i <= x.mask; i, p = i+1, (p+1)&x.mask {
		c := x.cells[p].Load()
		if c == 0 {
			return 0, false
		}
		if s.tables[c-1].key == key {
			return c - 1, true
		}
	}
	return 0, false
}

// put adds key → slot; key must not be present. REQUIRES: s.mu held.
func (x *slotIndex) put(key Key, slot int32) {
	p := x.home(key)
	for x.cells[p].Load() != 0 {
		p = (p + 1) & x.mask
	}
	x.cells[p].Store(slot + 1)
	x.n++
}

// del removes key, shifting later entries of its probe run back so that no
// tombstones are needed. REQUIRES: s.mu held.
func (x *slotIndex) del(s *Set, key Key) {
	p := x.home(key)
	for {
		c := x.cells[p].Load()
		if c == 0 {
			return
		}
		if s.tables[c-1].key == key {
			break
		}
		p = (p + 1) & x.mask
	}
	x.n--
	q := p
	for {
		q = (q + 1) & x.mask
		c := x.cells[q].Load()
		if c == 0 {
			x.cells[p].Store(0)
			return
		}
		h := x.home(s.tables[c-1].key)
		// The entry at q stays if its home lies cyclically in (p, q].
		if (p < q && p < h && h <= q) || (q < p && (p < h || h <= q)) {
			continue
		}
		x.cells[p].Store(c)
		p = q
	}
}

// packIK folds a key's image and kind into one word for lock-free checks.
func packIK(k Key) uint64 { return uint64(k.Image)<<8 | uint64(k.Kind) }

// View returns the ready table for key without taking any lock, with the
// table's sequence number: the caller reads the bytes with Word and then
// calls Valid(seq); only if that reports true were the words read the
// key's, unchanged. View neither pins, counts nor waits; a miss (false)
// may be spurious while the set changes, so the caller falls back to its
// locked path (Peek, Lookup, Insert). A caller that uses View must fill
// tables through Insert (never Get's Load, whose writes into a slot are the
// caller's own and not atomic) and change their bytes only with SetWord.
// It does not allocate.
func (s *Set) View(key Key) (t *Table, seq uint64, ok bool) {
	x := &s.idx
	ik := packIK(key)
	for i, p := uint64(0), x.home(key); i <= x.mask; i, p = i+1, (p+1)&x.mask {
		c := x.cells[p].Load()
		if c == 0 {
			return nil, 0, false
		}
		t := &s.tables[c-1]
		seq := t.seq.Load()
		if seq&1 == 0 && t.koff.Load() == key.Off && t.kik.Load() == ik {
			return t, seq, true
		}
	}
	return nil, 0, false
}

// Valid reports whether the table still holds the key and bytes it held
// when View returned seq: no eviction, discard or SetWord since.
func (t *Table) Valid(seq uint64) bool { return t.seq.Load() == seq }

// Referenced records a use of the table found by View, for eviction: the
// set gives a referenced table a second chance (it moves to the front of
// the LRU list instead of being evicted) and clears the mark. One store
// per table per eviction round; no lock.
func (t *Table) Referenced() {
	if !t.refd.Load() {
		t.refd.Store(true)
	}
}

// Word returns the i-th 64-bit word of the table's bytes, read as big
// endian (the order of every on-disk table this cache holds), with one
// atomic load. REQUIRES: Config.TableSize a multiple of 8, i in range.
func (t *Table) Word(i int) uint64 {
	p := (*uint64)(unsafe.Pointer(&t.data[i*8]))
	return fromNative(atomic.LoadUint64(p))
}

// SetWord stores v as the i-th big-endian word with one atomic store, and
// moves the table's sequence around the store so that a View reader that
// overlaps it fails Valid. REQUIRES: the caller holds a pin and is the
// table's only writer (the driver's metadata lock); TableSize a multiple
// of 8.
func (t *Table) SetWord(i int, v uint64) {
	p := (*uint64)(unsafe.Pointer(&t.data[i*8]))
	seq := t.seq.Load()
	if seq&1 != 0 {
		// Not readable through View (an orphan): no reader to warn.
		atomic.StoreUint64(p, fromNative(v))
		return
	}
	t.seq.Store(seq + 1)
	atomic.StoreUint64(p, fromNative(v))
	t.seq.Store(seq + 2)
}

// BeginWrite makes the table unreadable through View until EndWrite, for
// a change of several words that readers must see whole (SetWord inside
// the pair does not move the sequence again). It returns the token for
// EndWrite. REQUIRES: as for SetWord.
func (t *Table) BeginWrite() uint64 {
	seq := t.seq.Load()
	if seq&1 == 0 {
		t.seq.Store(seq + 1)
	}
	return seq
}

// EndWrite ends the change BeginWrite began; readers that overlapped it
// fail Valid.
func (t *Table) EndWrite(token uint64) {
	if token&1 == 0 {
		t.seq.Store(token + 2)
	}
}

// fromNative converts between big endian and the CPU's order (its own
// inverse).
func fromNative(x uint64) uint64 {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], x)
	return binary.BigEndian.Uint64(b[:])
}
