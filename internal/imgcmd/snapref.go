package imgcmd

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/internal/cli"
)

// snapshotRef is a -l argument of convert and measure: an internal
// snapshot to read instead of the active disk, as "ID_OR_NAME" or as
// "snapshot.id=ID,snapshot.name=NAME" (either or both).
type snapshotRef struct {
	idOrName string // the plain form
	id, name string // the option form
	opts     bool
}

// parseSnapshotRef reads a -l argument. A bad option is qemu-img's two
// lines in drop-in mode, one line naming the option as ringblk.
func parseSnapshotRef(v string) (*snapshotRef, error) {
	if !strings.HasPrefix(v, "snapshot.") {
		return &snapshotRef{idOrName: v}, nil
	}
	r := &snapshotRef{opts: true}
	for _, kv := range strings.Split(v, ",") {
		k, val, _ := strings.Cut(kv, "=")
		switch k {
		case "snapshot.id":
			r.id = val
		case "snapshot.name":
			r.name = val
		default:
			if cli.Prog == "ringblk" {
				return nil, cli.Usagef("Invalid snapshot option '%s' in -l %s (snapshot.id, snapshot.name)", k, v)
			}
			return nil, &cli.HintError{
				Err:  cli.Usagef("Invalid parameter '%s'", k),
				Hint: cli.Prog + ": Failed in parsing snapshot param '" + v + "'\n",
			}
		}
	}
	return r, nil
}

// load makes img (opened read-only) read the snapshot. Only qcow2 has
// internal snapshots.
func (r *snapshotRef) load(img *cli.BlkImage) error {
	d := img.Qcow2
	if d == nil {
		return fmt.Errorf("Failed to load snapshot: the %s format has no internal snapshots", img.Format)
	}
	id, name := r.id, r.name
	if !r.opts {
		sn, _, found := d.FindSnapshot(r.idOrName)
		if !found {
			return errors.New("Failed to load snapshot: Can't find snapshot")
		}
		id, name = sn.ID, sn.Name
	}
	if err := d.LoadSnapshotTmp(id, name); err != nil {
		if errors.Is(err, qcow2.ErrSnapshotNotFound) {
			return errors.New("Failed to load snapshot: Can't find snapshot")
		}
		if words, _ := snapshotL1Words(err); words != "" { // snapshot_words.go
			return &wordsErr{"Failed to load snapshot: " + words, err}
		}
		return fmt.Errorf("Failed to load snapshot: %w", cli.PlainErr(err))
	}
	return nil
}
