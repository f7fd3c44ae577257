package cli

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/drivers/qcow2"
	qcow2fmt "github.com/ringblk/ringblk/drivers/qcow2/format"
)

// SnapshotRef is a -l argument of qemu-img convert and measure and of
// qemu-nbd: an internal
// snapshot to read instead of the active disk, as "ID_OR_NAME" or as
// "snapshot.id=ID,snapshot.name=NAME" (either or both).
type SnapshotRef struct {
	idOrName string // the plain form
	id, name string // the option form
	opts     bool
}

// ParseSnapshotRef reads a -l argument. A bad option is qemu-img's two
// lines in drop-in mode, one line naming the option as ringblk.
func ParseSnapshotRef(v string) (*SnapshotRef, error) {
	if !strings.HasPrefix(v, "snapshot.") {
		return &SnapshotRef{idOrName: v}, nil
	}
	r := &SnapshotRef{opts: true}
	for _, kv := range strings.Split(v, ",") {
		k, val, _ := strings.Cut(kv, "=")
		switch k {
		case "snapshot.id":
			r.id = val
		case "snapshot.name":
			r.name = val
		default:
			if Prog == "ringblk" {
				return nil, Usagef("Invalid snapshot option '%s' in -l %s (snapshot.id, snapshot.name)", k, v)
			}
			return nil, &HintError{
				Err:  Usagef("Invalid parameter '%s'", k),
				Hint: Prog + ": Failed in parsing snapshot param '" + v + "'\n",
			}
		}
	}
	return r, nil
}

// Load makes d, a qcow2 node opened read-only, read the snapshot (format
// names the image's format, for the message when it is not qcow2: only
// qcow2 has internal snapshots).
func (r *SnapshotRef) Load(d *qcow2.Driver, format string) error {
	if d == nil {
		return fmt.Errorf("Failed to load snapshot: the %s format has no internal snapshots", format)
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
		if words, _ := SnapshotL1Words(err); words != "" {
			return &wordedError{msg: "Failed to load snapshot: " + words, err: err}
		}
		return fmt.Errorf("Failed to load snapshot: %w", PlainErr(err))
	}
	return nil
}

// QEMU 7.2 opens an image whose snapshot table has an entry with invalid
// L1 table fields and refuses only the operations that need that table
// (qcow2_validate_table in snapshot apply, delete, load and the zero
// expansion of a downgrade; iotest 080). These are its words for them, in
// drop-in mode; ringblk's own message names the field and value.

// SnapshotL1Words returns QEMU's sentence for a refused snapshot L1 table
// and the errno QEMU's callers report it with; "" when err is not one or
// ringblk runs under its own name.
func SnapshotL1Words(err error) (string, syscall.Errno) {
	var fe *qcow2fmt.FormatError
	if Prog == "ringblk" || !errors.As(err, &fe) || !strings.HasPrefix(fe.Field, "snapshot[") {
		return "", 0
	}
	switch {
	case strings.HasSuffix(fe.Field, ".l1_table_offset") && strings.HasPrefix(fe.Reason, "offset invalid"):
		return "Snapshot L1 table offset invalid", syscall.EINVAL
	case strings.HasSuffix(fe.Field, ".l1_size") && fe.Reason == "snapshot L1 table too large":
		return "Snapshot L1 table too large", syscall.EFBIG
	}
	return "", 0
}
