package imgcmd

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/internal/cli"
)

// snapshotParam is convert's -l: an internal snapshot of the source to
// read instead of its active disk. qemu-img's two spellings: a plain ID or
// name, or "snapshot.id=ID,snapshot.name=NAME" (either key or both).
type snapshotParam struct {
	set      bool
	idOrName string // the plain spelling
	id, name string // the snapshot.* spelling
}

func parseSnapshotParam(v string) (snapshotParam, error) {
	if !strings.HasPrefix(v, "snapshot.") {
		return snapshotParam{set: true, idOrName: v}, nil
	}
	p := snapshotParam{set: true}
	for _, kv := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(kv, "=")
		switch {
		case !ok:
			return p, fmt.Errorf("Invalid parameter '%s'", kv)
		case k == "snapshot.id":
			p.id = val
		case k == "snapshot.name":
			p.name = val
		default:
			return p, fmt.Errorf("Invalid parameter '%s'", k)
		}
	}
	return p, nil
}

// load makes the opened source show the snapshot (more: how many sources
// follow it; qemu-img refuses a snapshot of concatenated sources).
func (p snapshotParam) load(src *cli.BlkImage, more int) error {
	if !p.set {
		return nil
	}
	if more > 0 {
		return errors.New("No support for concatenating multiple snapshot")
	}
	d := src.Qcow2
	if d == nil {
		return fmt.Errorf("Failed to load snapshot: Block format '%s' does not support internal snapshots", src.Format)
	}
	key := p.idOrName
	if key == "" {
		// snapshot.id / snapshot.name: every key given must match (QEMU's
		// find_snapshot_by_id_and_name); the ID then names it exactly.
		for _, sn := range d.Snapshots() {
			if (p.id == "" || sn.ID == p.id) && (p.name == "" || sn.Name == p.name) {
				key = sn.ID
				break
			}
		}
		if key == "" {
			return errors.New("Failed to load snapshot: Can't find snapshot")
		}
	}
	if err := d.LoadSnapshotTmp(key); err != nil {
		if errors.Is(err, qcow2.ErrSnapshotNotFound) {
			return errors.New("Failed to load snapshot: Can't find snapshot")
		}
		return fmt.Errorf("Failed to load snapshot: %v", cli.PlainErr(err))
	}
	return nil
}
