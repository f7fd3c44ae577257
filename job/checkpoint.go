package job

import (
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/ringblk/ringblk/bitmap"
	"github.com/ringblk/ringblk/block"
)

// Checkpoints (beyond QEMU). QEMU's bitmap commands can freeze, disable,
// add and merge bitmaps, but each is its own command, so an incremental
// boundary cannot be tied to the exact state a backup or an export
// copies: a write can land between "disable bitmap A", "add bitmap B" and
// "start the backup". A Chain makes the boundary one atomic call: inside
// one drained section of the node — nothing in flight, nothing admitted —
// it freezes the bitmap that tracked writes since the previous checkpoint,
// attaches a new one, and runs the caller's During (typically NewBackup
// with Drained and CopyBitmap, or an export's snapshot), so the frozen
// bitmap describes exactly the difference between the previous checkpoint
// and the state During sees.
//
// Bitmap names: the active bitmap is the chain's name; frozen ones are
// name@seq (disabled). Delete merges a checkpoint's changes into the next
// newer one so the chain stays complete; Rotate keeps the newest k;
// Since merges a range of them (a differential from an older checkpoint).

// Chain is a sequence of checkpoints of one node.
type Chain struct {
	g    *block.Graph
	node *block.Node
	name string
	gran int64

	mu     sync.Mutex
	seq    uint64
	frozen []*Checkpoint // oldest first
}

// Checkpoint is one frozen boundary.
type Checkpoint struct {
	Seq  uint64
	Name string // the frozen bitmap's name (chain@seq)
	// Changes holds the writes between the previous checkpoint and this
	// one; nil for the first checkpoint (everything: take a full copy).
	Changes *bitmap.Bitmap
}

// NewChain returns the checkpoint chain name of node n (granularity 0:
// bitmap.DefaultGranularity). Nothing is tracked until the first
// Checkpoint.
func NewChain(n *block.Node, name string, granularity int64) (*Chain, error) {
	if name == "" {
		return nil, errors.New("job: empty checkpoint chain name")
	}
	if granularity == 0 {
		granularity = bitmap.DefaultGranularity
	}
	return &Chain{g: n.Graph(), node: n, name: name, gran: granularity}, nil
}

// Checkpoint takes the next checkpoint atomically and runs during (may be
// nil) inside the same drained section, on the main Context. If during
// fails, the checkpoint is undone (the frozen bitmap is merged back into
// the active one) and the error returned.
func (c *Chain) Checkpoint(during func(cp *Checkpoint) error) (*Checkpoint, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var cp *Checkpoint
	var err error
	c.g.Control(func() {
		c.node.DrainedBegin()
		defer c.node.DrainedEnd()
		var size int64
		if size, err = c.node.Length(); err != nil {
			return
		}
		next, e := bitmap.New(c.name, size, c.gran)
		if e != nil {
			err = e
			return
		}
		seq := c.seq + 1
		cp = &Checkpoint{Seq: seq, Name: c.name + "@" + strconv.FormatUint(seq, 10)}
		old := c.node.Bitmap(c.name)
		if old != nil {
			if old.Busy() {
				err = &block.BitmapError{Node: c.node.Name(), Bitmap: c.name, Err: bitmap.ErrBusy}
				return
			}
			old.SetEnabled(false)
			old.Rename(cp.Name)
			cp.Changes = old
			// Persistence (a qcow2 bitmap stored at close) stays with the
			// chain's name: the new active bitmap is stored, the frozen
			// one lives in memory only (its name@seq would clash with a
			// later session's).
			next.Persistent, old.Persistent = old.Persistent, false
		}
		if err = c.node.AttachBitmap(next); err != nil {
			if old != nil {
				old.Rename(c.name)
				old.SetEnabled(true)
				old.Persistent = next.Persistent
			}
			return
		}
		if during != nil {
			if err = during(cp); err != nil {
				c.node.DetachBitmap(next)
				if old != nil {
					old.Rename(c.name)
					old.SetEnabled(true)
					old.Persistent = next.Persistent
					_ = old.Merge(next) // nothing was written: drained
				}
				return
			}
		}
		c.seq = seq
		c.frozen = append(c.frozen, cp)
	})
	if err != nil {
		return nil, err
	}
	return cp, nil
}

// Checkpoints returns the frozen checkpoints, oldest first.
func (c *Chain) Checkpoints() []*Checkpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Checkpoint(nil), c.frozen...)
}

// Active returns the bitmap tracking writes since the newest checkpoint.
func (c *Chain) Active() *bitmap.Bitmap { return c.node.Bitmap(c.name) }

// Node returns the node the chain tracks.
func (c *Chain) Node() *block.Node { return c.node }

func (c *Chain) index(seq uint64) int {
	for i, cp := range c.frozen {
		if cp.Seq == seq {
			return i
		}
	}
	return -1
}

// Delete removes checkpoint seq; its changes are merged into the next
// newer checkpoint (or the active bitmap), so an incremental from the
// checkpoint before it still covers everything.
func (c *Chain) Delete(seq uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := c.index(seq)
	if i < 0 {
		return fmt.Errorf("job: chain %s has no checkpoint %d", c.name, seq)
	}
	cp := c.frozen[i]
	var err error
	c.g.Control(func() {
		if cp.Changes != nil {
			if cp.Changes.Busy() {
				err = &block.BitmapError{Node: c.node.Name(), Bitmap: cp.Name, Err: bitmap.ErrBusy}
				return
			}
			into := c.node.Bitmap(c.name)
			if i+1 < len(c.frozen) {
				into = c.frozen[i+1].Changes
			}
			if into != nil {
				if err = into.Merge(cp.Changes); err != nil {
					return
				}
			}
			c.node.DetachBitmap(cp.Changes)
		} else if i+1 < len(c.frozen) {
			// The first checkpoint stands for "everything": so does the
			// one that now comes first.
			next := c.frozen[i+1]
			if next.Changes != nil {
				c.node.DetachBitmap(next.Changes)
				next.Changes = nil
			}
		}
		c.frozen = append(c.frozen[:i], c.frozen[i+1:]...)
	})
	return err
}

// Rotate deletes the oldest checkpoints until at most keep are left.
func (c *Chain) Rotate(keep int) error {
	for {
		c.mu.Lock()
		n := len(c.frozen)
		var oldest uint64
		if n > 0 {
			oldest = c.frozen[0].Seq
		}
		c.mu.Unlock()
		if n <= keep {
			return nil
		}
		if err := c.Delete(oldest); err != nil {
			return err
		}
	}
}

// Since returns a new bitmap (not attached) with every change after
// checkpoint from up to checkpoint to (both frozen; to 0: the newest): the
// clusters a differential backup from checkpoint from must copy to reach
// checkpoint to.
func (c *Chain) Since(from, to uint64) (*bitmap.Bitmap, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := c.index(from)
	j := len(c.frozen) - 1
	if to != 0 {
		j = c.index(to)
	}
	if i < 0 || j < i {
		return nil, fmt.Errorf("job: chain %s: no checkpoints %d..%d", c.name, from, to)
	}
	var size int64
	var err error
	c.g.Control(func() { size, err = c.node.Length() })
	if err != nil {
		return nil, err
	}
	out, err := bitmap.New(fmt.Sprintf("%s@%d..%d", c.name, from, c.frozen[j].Seq), size, c.gran)
	if err != nil {
		return nil, err
	}
	out.SetEnabled(false)
	for _, cp := range c.frozen[i+1 : j+1] {
		if cp.Changes == nil {
			out.Fill()
			continue
		}
		if err := out.Merge(cp.Changes); err != nil {
			return nil, err
		}
	}
	return out, nil
}
