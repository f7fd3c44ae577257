package cache

import (
	"sync"
	"sync/atomic"
)

// LRU is the Clean cache as an exact least-recently-used list under one
// mutex, bounded by table bytes (PolicyLRU). Sets are synchronous: a filled
// table is visible to the next Get, and nothing is dropped or rejected
// except a table larger than the whole budget.
type LRU struct {
	fl flights

	hits, misses         paddedCounter
	stale, fills, joined atomic.Uint64

	mu struct {
		sync.Mutex
		maxBytes int64
		// INVARIANT: bytes == sum of len(e.data) over index, and
		// bytes <= maxBytes after every Offer returns.
		bytes      int64
		index      map[Key]*lruEntry
		head, tail *lruEntry // head is the most recently used
		closed     bool

		evictions, rejected uint64
	}
}

type lruEntry struct {
	cleanEntry
	prev, next *lruEntry
}

// NewLRU returns an empty LRU holding at most maxBytes of tables.
func NewLRU(maxBytes int64) *LRU {
	l := &LRU{}
	l.mu.maxBytes = maxBytes
	l.mu.index = make(map[Key]*lruEntry)
	return l
}

// Get implements Clean.
func (l *LRU) Get(key Key, gen uint64) ([]byte, bool) {
	l.mu.Lock()
	e, ok := l.mu.index[key]
	if !ok {
		l.mu.Unlock()
		l.misses.Add(1)
		return nil, false
	}
	if e.gen != gen {
		// Generations of a key only grow: an older entry is dead, so
		// free its budget now. A newer one stays: the caller is the
		// stale one.
		if e.gen < gen {
			l.removeLocked(e)
		}
		l.mu.Unlock()
		l.stale.Add(1)
		l.misses.Add(1)
		return nil, false
	}
	if l.mu.head != e {
		l.unlinkLocked(e)
		l.pushFrontLocked(e)
	}
	data := e.data
	l.mu.Unlock()
	l.hits.Add(1)
	return data, true
}

// Contains implements Clean.
func (l *LRU) Contains(key Key, gen uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.mu.index[key]
	if !ok || e.gen != gen {
		return false
	}
	if l.mu.head != e {
		l.unlinkLocked(e)
		l.pushFrontLocked(e)
	}
	return true
}

// Fill implements Clean.
func (l *LRU) Fill(key Key, gen uint64, load func(Key) ([]byte, error)) ([]byte, error) {
	if data, ok := l.Get(key, gen); ok {
		return data, nil
	}
	data, joined, err := l.fl.do(key, gen, func(k Key) ([]byte, error) {
		l.fills.Add(1)
		d, err := load(k)
		if err == nil {
			l.Offer(k, gen, d)
		}
		return d, err
	})
	if joined {
		l.joined.Add(1)
	}
	return data, err
}

// Offer implements Clean. A copy under an older generation than the one
// cached is ignored.
func (l *LRU) Offer(key Key, gen uint64, data []byte) {
	size := int64(len(data))
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.closed || size == 0 {
		return
	}
	if size > l.mu.maxBytes {
		l.mu.rejected++
		return
	}
	if e, ok := l.mu.index[key]; ok {
		if gen < e.gen {
			return
		}
		l.removeLocked(e)
	}
	for l.mu.bytes+size > l.mu.maxBytes {
		l.removeLocked(l.mu.tail)
		l.mu.evictions++
	}
	e := &lruEntry{cleanEntry: cleanEntry{key: key, gen: gen, data: data}}
	l.mu.index[key] = e
	l.mu.bytes += size
	l.pushFrontLocked(e)
}

func (l *LRU) removeLocked(e *lruEntry) {
	l.unlinkLocked(e)
	delete(l.mu.index, e.key)
	l.mu.bytes -= int64(len(e.data))
}

func (l *LRU) pushFrontLocked(e *lruEntry) {
	e.prev = nil
	e.next = l.mu.head
	if l.mu.head != nil {
		l.mu.head.prev = e
	} else {
		l.mu.tail = e
	}
	l.mu.head = e
}

func (l *LRU) unlinkLocked(e *lruEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.mu.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.mu.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

// Stats implements Clean.
func (l *LRU) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{
		Hits:      l.hits.Load(),
		Misses:    l.misses.Load(),
		Stale:     l.stale.Load(),
		Fills:     l.fills.Load(),
		Joined:    l.joined.Load(),
		Evictions: l.mu.evictions,
		Rejected:  l.mu.rejected,
		Resident:  int64(len(l.mu.index)),
	}
}

// Close implements Clean: it drops every entry. The LRU runs no goroutine.
func (l *LRU) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.closed = true
	clear(l.mu.index)
	l.mu.head, l.mu.tail = nil, nil
	l.mu.bytes = 0
}
