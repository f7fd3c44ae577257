package job

import (
	"sync"

	"github.com/ringblk/ringblk/aio"
)

// ranges serialises a job's copies against the guest writes its filter
// sees (QEMU's tracked requests of block-copy and mirror): a holder owns
// [off, end) until it unlocks; a coroutine that finds its range taken
// parks until an unlock. One mutex, taken only while a job runs and only
// by the job's filter and copy loop; the block layer's request path
// never touches it.
type ranges struct {
	mu      sync.Mutex
	held    []span
	nextID  uint64
	waiters []*aio.Co
}

type span struct {
	off, end int64
	id       uint64
}

func (l *ranges) overlaps(off, end int64) bool {
	for _, s := range l.held {
		if s.off < end && off < s.end {
			return true
		}
	}
	return false
}

// tryLock takes [off, end) if nothing overlapping is held.
func (l *ranges) tryLock(off, end int64) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.overlaps(off, end) {
		return 0, false
	}
	l.nextID++
	l.held = append(l.held, span{off, end, l.nextID})
	return l.nextID, true
}

// lock takes [off, end), parking co until it is free.
func (l *ranges) lock(co *aio.Co, off, end int64) uint64 {
	for {
		l.mu.Lock()
		if !l.overlaps(off, end) {
			l.nextID++
			id := l.nextID
			l.held = append(l.held, span{off, end, id})
			l.mu.Unlock()
			return id
		}
		l.waiters = append(l.waiters, co)
		l.mu.Unlock()
		co.Yield()
	}
}

// unlock releases a range and wakes every waiter (each checks again).
func (l *ranges) unlock(id uint64) {
	l.mu.Lock()
	for i, s := range l.held {
		if s.id == id {
			l.held = append(l.held[:i], l.held[i+1:]...)
			break
		}
	}
	ws := l.waiters
	l.waiters = nil
	l.mu.Unlock()
	for _, co := range ws {
		co.Wake()
	}
}

// count returns how many ranges are held.
func (l *ranges) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}
