package block

// Debug events (QEMU's BlkdebugEvent): named points in a format driver's
// work — an L2 table loaded, a refcount block updated, guest data about
// to be read — that a debug filter under the driver (drivers/blkdebug)
// turns into injected errors, state changes or breakpoints. A format
// driver raises them on its file child; a file node whose driver is not a
// DebugEventer ignores them, and a driver that looked its file's
// DebugEventer up once at open pays one nil test per event point.

// DebugEvent is one debug event.
type DebugEvent uint8

// The events, in QEMU 7.2's order; DebugEventNames holds their names.
const (
	DbgL1Update DebugEvent = iota
	DbgL1GrowAllocTable
	DbgL1GrowWriteTable
	DbgL1GrowActivateTable
	DbgL2Load
	DbgL2Update
	DbgL2UpdateCompressed
	DbgL2AllocCowRead
	DbgL2AllocWrite
	DbgReadAIO
	DbgReadBackingAIO
	DbgReadCompressed
	DbgWriteAIO
	DbgWriteCompressed
	DbgVMStateLoad
	DbgVMStateSave
	DbgCowRead
	DbgCowWrite
	DbgReftableLoad
	DbgReftableGrow
	DbgReftableUpdate
	DbgRefblockLoad
	DbgRefblockUpdate
	DbgRefblockUpdatePart
	DbgRefblockAlloc
	DbgRefblockAllocHookup
	DbgRefblockAllocWrite
	DbgRefblockAllocWriteBlocks
	DbgRefblockAllocWriteTable
	DbgRefblockAllocSwitchTable
	DbgClusterAlloc
	DbgClusterAllocBytes
	DbgClusterFree
	DbgFlushToOS
	DbgFlushToDisk
	DbgPwritevRmwHead
	DbgPwritevRmwAfterHead
	DbgPwritevRmwTail
	DbgPwritevRmwAfterTail
	DbgPwritev
	DbgPwritevZero
	DbgPwritevDone
	DbgEmptyImagePrepare
	DbgL1ShrinkWriteTable
	DbgL1ShrinkFreeL2Clusters
	DbgCorWrite
	DbgClusterAllocSpace
	DbgNone
	NumDebugEvents
)

// DebugEventNames are the events' names in configuration files and
// qemu-io's break command.
var DebugEventNames = [NumDebugEvents]string{
	"l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
	"l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
	"read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
	"vmstate_load", "vmstate_save", "cow_read", "cow_write",
	"reftable_load", "reftable_grow", "reftable_update",
	"refblock_load", "refblock_update", "refblock_update_part", "refblock_alloc",
	"refblock_alloc_hookup", "refblock_alloc_write", "refblock_alloc_write_blocks",
	"refblock_alloc_write_table", "refblock_alloc_switch_table",
	"cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os", "flush_to_disk",
	"pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail",
	"pwritev", "pwritev_zero", "pwritev_done", "empty_image_prepare",
	"l1_shrink_write_table", "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space",
	"none",
}

// DebugEventByName returns the event named name (QEMU also accepts the
// older dotted spellings, "l2_alloc.write": a dot reads as an underscore).
func DebugEventByName(name string) (DebugEvent, bool) {
	b := []byte(name)
	for i, c := range b {
		if c == '.' {
			b[i] = '_'
		}
	}
	for i, n := range DebugEventNames {
		if n == string(b) {
			return DebugEvent(i), true
		}
	}
	return 0, false
}

func (e DebugEvent) String() string {
	if e < NumDebugEvents {
		return DebugEventNames[e]
	}
	return "debug-event?"
}

// DebugEventer is a driver that reacts to debug events raised on its node
// (drivers/blkdebug). DebugEvent may be called on any Context and must not
// block.
type DebugEventer interface {
	DebugEvent(ev DebugEvent)
}

// DebugEventerOf returns n's driver as a DebugEventer, or nil.
func DebugEventerOf(n *Node) DebugEventer {
	if n == nil {
		return nil
	}
	d, _ := n.Driver().(DebugEventer)
	return d
}
