package qcow2

// l2Cache is a small bounded cache of whole L2 tables keyed by host
// offset, owned by one image and guarded by Driver.mu. It is the seam where
// the shared cache package can replace it: the driver needs only get, put,
// the dirty set and eviction of clean tables.
//
// Dirty tables (changed in memory, not yet written) are pinned: they are
// never evicted, only written back by flushMetadata in dependency order
// (flush.go), after which they become clean. Clean tables are evicted
// least recently used first when the cache is over capacity.
//
// INVARIANT: len(t.buf) == cluster size for every table.
type l2Cache struct {
	tables   map[int64]*l2Table
	capacity int // tables
	tick     uint64
	dirty    int
}

type l2Table struct {
	buf   []byte
	used  uint64
	dirty bool
	pins  int // > 0: a writer holds it between lookup and update
}

const defaultL2CacheBytes = 8 << 20

func newL2Cache(clusterSize, bytes int64) *l2Cache {
	if bytes <= 0 {
		bytes = defaultL2CacheBytes
	}
	n := int(max(bytes/clusterSize, 4))
	return &l2Cache{tables: make(map[int64]*l2Table, n), capacity: n}
}

// get returns the table at off and marks it used. No allocation.
func (c *l2Cache) get(off int64) *l2Table {
	t := c.tables[off]
	if t != nil {
		c.tick++
		t.used = c.tick
	}
	return t
}

// put inserts a freshly loaded or created table, evicting clean tables if
// the cache is over capacity. If another loader got there first, its
// table wins and is returned.
func (c *l2Cache) put(off int64, buf []byte) *l2Table {
	if t := c.tables[off]; t != nil {
		return t
	}
	for len(c.tables) >= c.capacity && c.evictOne() {
	}
	c.tick++
	t := &l2Table{buf: buf, used: c.tick}
	c.tables[off] = t
	return t
}

func (c *l2Cache) evictOne() bool {
	var victim int64 = -1
	var oldest uint64
	for off, t := range c.tables {
		if t.dirty || t.pins > 0 {
			continue
		}
		if victim < 0 || t.used < oldest {
			victim, oldest = off, t.used
		}
	}
	if victim < 0 {
		return false
	}
	delete(c.tables, victim)
	return true
}

func (c *l2Cache) markDirty(t *l2Table) {
	if !t.dirty {
		t.dirty = true
		c.dirty++
	}
}

func (c *l2Cache) markClean(t *l2Table) {
	if t.dirty {
		t.dirty = false
		c.dirty--
	}
}

// drop removes the table at off (its cluster was freed).
func (c *l2Cache) drop(off int64) {
	if t := c.tables[off]; t != nil {
		c.markClean(t)
		delete(c.tables, off)
	}
}

// refBlock is a loaded refcount block. Refcount blocks are few (one
// covers cluster_size*8/refcount_bits clusters), so all loaded ones stay;
// dirty ones are written back by flushMetadata.
type refBlock struct {
	buf   []byte
	dirty bool
}
