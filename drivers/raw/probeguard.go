package raw

import (
	"bytes"
	"encoding/binary"
	"syscall"

	"github.com/ringblk/ringblk/block"
)

// A raw image whose format was guessed by probing (the user gave none)
// is guarded as QEMU's raw format driver guards it: a write to its first
// sector must not make the image probe as another format. Without the
// guard, a guest could write, say, a qcow2 header naming a host file as
// its backing file into its own disk, and the next probing open (by us
// or by QEMU) would read that host file into the guest's disk. The node
// gets a request alignment of ProbeSize, so the block layer turns a
// smaller write into a serialised read-modify-write of whole sectors and
// the driver always sees the whole first sector a write leaves.

// ProbeSize is how much of an image QEMU's format probe looks at (its
// BLOCK_PROBE_BUF_SIZE), and the alignment of a guarded node.
const ProbeSize = 512

// probeRefused tells whether the write r would leave a first sector that
// QEMU probes as a format other than raw. REQUIRES: r.Off < ProbeSize on
// a guarded node (so r.Off is 0 and r.Len at least ProbeSize).
func probeRefused(r *block.Request) bool {
	if r.Off != 0 || r.Len < ProbeSize {
		return true // cannot happen on a guarded node: refuse rather than guess
	}
	var sector [ProbeSize]byte
	n := 0
	for _, b := range r.Iov {
		n += copy(sector[n:], b)
		if n == ProbeSize {
			break
		}
	}
	return ProbesAsOtherFormat(sector[:n])
}

// errProbeGuard is the refusal, QEMU's EPERM.
var errProbeGuard = syscall.EPERM

// ProbesAsOtherFormat reports whether b, the start of an image, is what
// QEMU 7.2's format probe takes for a format other than raw: the magic
// numbers (and the version fields they require) of qcow2 and qcow, LUKS
// version 1, QED, VMDK (sparse, COWD or a text descriptor), VDI, VHD,
// VHDX, Parallels, Bochs and cloop.
func ProbesAsOtherFormat(b []byte) bool {
	has := func(off int, s string) bool { return len(b) >= off+len(s) && string(b[off:off+len(s)]) == s }
	switch {
	case has(0, "QFI\xfb") && len(b) >= 8 && binary.BigEndian.Uint32(b[4:]) != 0: // qcow2 (≥ 2), qcow (1)
		return true
	case has(0, "LUKS\xba\xbe") && len(b) >= 8 && binary.BigEndian.Uint16(b[6:]) == 1:
		return true
	case has(0, "QED\x00"), has(0, "KDMV"), has(0, "COWD"), has(0, "conectix"), has(0, "vhdxfile"):
		return true
	case len(b) >= 68 && binary.LittleEndian.Uint32(b[64:]) == 0xbeda107f: // VDI
		return true
	case (has(0, "WithoutFreeSpace") || has(0, "WithouFreSpacExt")) && len(b) >= 20 && binary.LittleEndian.Uint32(b[16:]) == 2: // Parallels
		return true
	case has(0, "Bochs Virtual HD Image\x00") && has(32, "Redolog\x00") && has(48, "Growing\x00") && len(b) >= 68 &&
		(binary.LittleEndian.Uint32(b[64:]) == 0x20000 || binary.LittleEndian.Uint32(b[64:]) == 0x10000):
		return true
	case has(0, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"):
		return true
	}
	return vmdkDescriptor(b)
}

// vmdkDescriptor is QEMU's test for a VMDK text descriptor: comment lines
// and blank lines, then "version=1", "version=2" or "version=3" ending a
// line.
func vmdkDescriptor(b []byte) bool {
	for len(b) > 0 {
		switch b[0] {
		case '#':
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return false
			}
			b = b[i+1:]
			continue
		case ' ':
			b = bytes.TrimLeft(b, " ")
			if len(b) > 0 && b[0] == '\r' {
				b = b[1:]
			}
			if len(b) == 0 || b[0] != '\n' {
				return false
			}
			b = b[1:]
			continue
		}
		for _, v := range []string{"version=1", "version=2", "version=3"} {
			if bytes.HasPrefix(b, []byte(v+"\n")) || bytes.HasPrefix(b, []byte(v+"\r\n")) {
				return true
			}
		}
		return false
	}
	return false
}
