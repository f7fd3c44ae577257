package cache

import "sync/atomic"

// Stats is a snapshot of a cache's counters. Every field counts events since
// the cache was created, except the three gauges at the end. A field that
// does not apply to a cache stays zero.
type Stats struct {
	Hits      uint64 // lookups answered from the cache
	Misses    uint64 // lookups that were not (Stale ones included)
	Stale     uint64 // tier 2: an entry was found but its generation was old
	Fills     uint64 // loads run on a miss (tier 1 Load, tier 2 fill function)
	Joined    uint64 // tier 2: misses that waited for another caller's fill
	Evictions uint64 // entries removed to make room
	Rejected  uint64 // tier 2: Sets refused by the admission policy
	Dropped   uint64 // tier 2: Sets lost before the policy saw them (full buffer)
	Full      uint64 // tier 1: Gets that failed with ErrFull

	Resident int64 // entries held now
	Dirty    int64 // tier 1: dirty entries now
	Pinned   int64 // tier 1: pinned entries now
}

// HitRatio returns Hits/(Hits+Misses), or 0 before the first lookup.
func (s Stats) HitRatio() float64 {
	n := s.Hits + s.Misses
	if n == 0 {
		return 0
	}
	return float64(s.Hits) / float64(n)
}

// paddedCounter sits alone on its cache line: tier-2 counters are bumped by
// every Context's thread, and sharing a line would make unrelated hits
// contend.
type paddedCounter struct {
	atomic.Uint64
	_ [56]byte
}
