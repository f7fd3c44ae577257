package imgcmd

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cli"
)

const snapshotHelp = `usage: ringblk snapshot [-f fmt] [-q] [-U] [-l | -a SNAP | -c SNAP | -d SNAP] FILE

List, create, apply or delete the internal snapshots of a qcow2 image, as
qemu-img snapshot does (the image stays usable by QEMU in both directions).

  -l               list the snapshots (qemu-img's table; nothing when there
                   are none)
  -c SNAP          create a snapshot named SNAP of the current disk content;
                   its ID is the largest numeric ID plus one. A name that is
                   already taken is refused (qemu-img accepts duplicates)
  -a SNAP          apply (revert to) snapshot SNAP, by ID or else by name;
                   the virtual size becomes the snapshot's
  -d SNAP          delete snapshot SNAP, by ID or else by name (qemu-img
                   looks names up only)
  -f fmt           image format (qcow2; raw has no snapshots); without it the
                   file is probed
  -q               quiet (accepted; only -l prints anything)
  -U, --force-share
                   open with shared locks; only with -l
  -h, --help       this help

Exit status: 0 on success, 1 on any error (unknown snapshot, bad options,
unreadable image, a read-only image for -a/-c/-d).
`

var snapshotSpec = cli.OptSpec{
	Short: map[byte]bool{'f': true, 'q': false, 'U': false, 'l': false, 'a': true, 'c': true, 'd': true, 'h': false},
	Long:  map[string]bool{"force-share": false, "help": false},
}

// Snapshot is "ringblk snapshot" (qemu-img snapshot): args are what follows the
// command name; the result is the exit status.
func Snapshot(args []string, stdout, stderr io.Writer) int {
	return cli.Run(snapshotHelp, stdout, stderr, func() (int, error) {
		args, imageOpts, err := cli.TakeGlobalOpts(args)
		if err != nil {
			return 1, err
		}
		opts, files, err := cli.ParseOpts(args, snapshotSpec)
		if err != nil {
			return 1, err
		}
		format, share := "", false
		action, name := "", ""
		for _, o := range opts {
			switch o.Name {
			case "f":
				format = o.Val
			case "U", "force-share":
				share = true
			case "l", "a", "c", "d":
				if action != "" {
					return 1, cli.Usagef("Cannot mix '-l', '-a', '-c', '-d'")
				}
				action, name = o.Name, o.Val
			}
		}
		if err := checkFormat(format); err != nil {
			return 1, err
		}
		if len(files) != 1 {
			return 1, cli.Usagef("Expecting one image file name")
		}
		file, format, err := cli.ImageFile(files[0], format, imageOpts)
		if err != nil {
			return 1, err
		}
		write := action == "a" || action == "c" || action == "d"
		if share && write {
			return 1, fmt.Errorf("Could not open '%s': force-share=on can only be used with read-only images", file)
		}
		img, err := cli.OpenBlk(file, cli.BlkOptions{Format: format, ReadOnly: !write, ForceShare: share})
		if err != nil {
			return 1, err
		}
		if rbd.IsName(file) && img.Format == "raw" {
			// A raw RBD image: RBD's own snapshots (a qcow2 image stored
			// in RBD has its internal ones, below).
			if err := img.Close(); err != nil {
				return 1, err
			}
			return snapshotRBD(file, action, name, stdout)
		}
		code, err := snapshotRun(img, action, name, stdout, stderr)
		if cerr := img.Close(); err == nil && cerr != nil {
			code, err = 1, fmt.Errorf("%s: %v", file, cli.PlainErr(cerr))
		}
		return code, err
	})
}

func snapshotRun(img *cli.BlkImage, action, name string, stdout, stderr io.Writer) (int, error) {
	d := img.Qcow2
	switch action {
	case "l":
		if d == nil {
			return 0, nil // raw: no snapshots, and qemu-img prints nothing
		}
		return 0, printSnapshotList(stdout, d.Snapshots())
	case "c":
		if d == nil {
			if cli.Prog != "ringblk" {
				return 1, fmt.Errorf("Could not create snapshot '%s': %s", name, qemuErrnoCause(syscall.ENOTSUP))
			}
			return 1, fmt.Errorf("Could not create snapshot '%s': the %s format does not support snapshots", name, img.Format)
		}
		if _, err := d.CreateSnapshot(qcow2.SnapshotCreateOptions{Name: name}); err != nil {
			if errors.Is(err, qcow2.ErrRefcountOverflow) && cli.Prog != "ringblk" {
				// qemu-img prints the driver's errno (iotest 112).
				return 1, fmt.Errorf("Could not create snapshot '%s': -22 (Invalid argument)", name)
			}
			if cli.Prog != "ringblk" && errors.Is(err, qcow2.ErrDataFileUnsupported) {
				return 1, fmt.Errorf("Could not create snapshot '%s': %s", name, qemuErrnoCause(syscall.ENOTSUP))
			}
			if e := snapshotCreateErrno(err); e != 0 { // snapshot_words.go
				return 1, fmt.Errorf("Could not create snapshot '%s': %s", name, qemuErrnoCause(e))
			}
			return 1, fmt.Errorf("Could not create snapshot '%s': %s", name, snapshotCause(err))
		}
	case "a":
		if d == nil {
			return 1, fmt.Errorf("Could not apply snapshot '%s': Block driver does not support snapshots", name)
		}
		if h := d.Header(); cli.Prog != "ringblk" && h.HasDataFile() {
			// qemu-img's driver refuses before looking the snapshot up.
			return 1, fmt.Errorf("Could not apply snapshot '%s': Failed to load snapshot: %s", name, strerror(syscall.ENOTSUP))
		}
		if err := d.ApplySnapshot(name); err != nil {
			if words, e := snapshotL1Words(err); words != "" {
				// qemu-img: the table's refusal, then the load's errno.
				fmt.Fprintf(stderr, "%s: %s\n", cli.Prog, words)
				return 1, fmt.Errorf("Could not apply snapshot '%s': Failed to load snapshot: %s", name, strerror(e))
			}
			if cli.Prog != "ringblk" {
				// qemu-img: the load's errno.
				switch {
				case errors.Is(err, qcow2.ErrDataFileUnsupported):
					return 1, fmt.Errorf("Could not apply snapshot '%s': Failed to load snapshot: %s", name, strerror(syscall.ENOTSUP))
				case errors.Is(err, qcow2.ErrSnapshotNotFound):
					return 1, fmt.Errorf("Could not apply snapshot '%s': Failed to load snapshot: %s", name, strerror(syscall.ENOENT))
				}
			}
			return 1, fmt.Errorf("Could not apply snapshot '%s': %s", name, snapshotCause(err))
		}
	case "d":
		if d == nil {
			return 1, fmt.Errorf("Could not delete snapshot '%s': snapshot not found", name)
		}
		if err := d.DeleteSnapshot(name); err != nil {
			var fe *qcow2.SnapshotFreeError
			if errors.As(err, &fe) {
				// qemu-img's driver reports the failed free on its own
				// line before the command's message (iotest 217).
				cause := cli.PlainErr(fe.Err)
				fmt.Fprintf(stderr, "qcow2_free_clusters failed: %v\n", cause)
				return 1, fmt.Errorf("Could not delete snapshot '%s': Failed to free the cluster and L1 table: %v", name, cause)
			}
			if words, _ := snapshotL1Words(err); words != "" {
				return 1, fmt.Errorf("Could not delete snapshot '%s': %s", name, words)
			}
			return 1, fmt.Errorf("Could not delete snapshot '%s': %s", name, snapshotCause(err))
		}
	}
	return 0, nil
}

// snapshotCause is the part of a snapshot error after the snapshot's name
// (which the command's own message names already).
func snapshotCause(err error) string {
	var se *qcow2.SnapshotError
	if errors.As(err, &se) {
		err = se.Err
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// printSnapshotList prints qemu-img 7.2's "Snapshot list:" table
// (bdrv_snapshot_dump's columns: the header and the rows use different
// widths, and a long ID or name pushes the rest of its row right). Dates
// are local time; a missing icount (-1) prints as an empty column.
func printSnapshotList(w io.Writer, snaps []format.Snapshot) error {
	if len(snaps) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("Snapshot list:\n")
	fmt.Fprintf(&b, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
	for i := range snaps {
		s := &snaps[i]
		date := time.Unix(int64(s.DateSec), 0).Format("2006-01-02 15:04:05")
		ns := s.VMClockNsec
		secs := ns / 1e9
		clock := fmt.Sprintf("%02d:%02d:%02d.%03d", secs/3600, secs/60%60, secs%60, ns/1e6%1000)
		icount := ""
		if s.ExtraDataSize >= 24 && s.Icount != ^uint64(0) {
			icount = fmt.Sprint(int64(s.Icount))
		}
		fmt.Fprintf(&b, "%-9s %-16s %8s%20s%13s%11s\n", cString(s.ID), cString(s.Name), sizeToStr(int64(s.VMStateSize)), date, clock, icount)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
