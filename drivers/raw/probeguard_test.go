package raw_test

import (
	"encoding/binary"
	"errors"
	"syscall"
	"testing"

	"github.com/ringblk/ringblk/drivers/raw"
)

// TestProbesAsOtherFormat: the first sectors QEMU 7.2's probe takes for a
// format other than raw (style B6.3), and near misses it leaves raw.
func TestProbesAsOtherFormat(t *testing.T) {
	sector := func(parts ...any) []byte {
		b := make([]byte, raw.ProbeSize)
		off := 0
		for _, p := range parts {
			switch v := p.(type) {
			case int:
				off = v
			case string:
				off += copy(b[off:], v)
			case uint32:
				binary.BigEndian.PutUint32(b[off:], v)
				off += 4
			}
		}
		return b
	}
	vdi := make([]byte, raw.ProbeSize)
	binary.LittleEndian.PutUint32(vdi[64:], 0xbeda107f)
	parallels := sector("WithoutFreeSpace")
	binary.LittleEndian.PutUint32(parallels[16:], 2)
	bochs := sector("Bochs Virtual HD Image", 32, "Redolog", 48, "Growing")
	binary.LittleEndian.PutUint32(bochs[64:], 0x20000)
	for _, c := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"zeros", make([]byte, raw.ProbeSize), false},
		{"MBR", sector(510, "\x55\xaa"), false},
		{"qcow2 v3", sector("QFI\xfb", uint32(3)), true},
		{"qcow2 v2", sector("QFI\xfb", uint32(2)), true},
		{"qcow v1", sector("QFI\xfb", uint32(1)), true},
		{"qcow2 magic, version 0", sector("QFI\xfb", uint32(0)), false},
		{"LUKS1", sector("LUKS\xba\xbe\x00\x01"), true},
		{"LUKS2", sector("LUKS\xba\xbe\x00\x02"), false},
		{"QED", sector("QED\x00"), true},
		{"VMDK sparse", sector("KDMV"), true},
		{"VMDK COWD", sector("COWD"), true},
		{"VMDK descriptor", sector("# Disk DescriptorFile\n  \nversion=1\nCID=ffffffff\n"), true},
		{"VMDK descriptor, empty line", sector("# Disk DescriptorFile\n\nversion=1\n"), false}, // QEMU accepts only blank lines of spaces
		{"VMDK descriptor CRLF", sector("# Disk DescriptorFile\r\nversion=3\r\n"), true},
		{"not a descriptor", sector("# comment\nhello=1\nversion=1\n"), false},
		{"VHD", sector("conectix"), true},
		{"VHDX", sector("vhdxfile"), true},
		{"VDI", vdi, true},
		{"Parallels", parallels, true},
		{"Parallels, other version", sector("WithoutFreeSpace"), false},
		{"Bochs", bochs, true},
		{"Bochs magic alone", sector("Bochs Virtual HD Image"), false},
	} {
		if got := raw.ProbesAsOtherFormat(c.b); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestProbedRawGuardsFirstSector: on a raw image whose format was probed,
// a write that would make the first sector probe as another format (a
// qcow2 header naming a host file as its backing file) fails with EPERM
// and changes nothing, as QEMU's raw driver refuses it; other writes to
// the first sector, sub-sector ones included, go through; an image whose
// format was given is not guarded.
func TestProbedRawGuardsFirstSector(t *testing.T) {
	e := newEnv(t, nil, 0)
	hdr := make([]byte, 104)
	copy(hdr, "QFI\xfb")
	binary.BigEndian.PutUint32(hdr[4:], 3)
	for _, probed := range []bool{true, false} {
		path, data := image(t, 64<<10, 7)
		n := e.node(path, raw.Options{Probed: probed})
		_, err := n.WriteAt(hdr, 0)
		if probed {
			if !errors.Is(err, syscall.EPERM) {
				t.Fatalf("probed: writing a qcow2 header at 0: %v, want EPERM", err)
			}
			mustEqual(t, "image after the refused write", fileBytes(t, path), data)
		} else if err != nil {
			t.Fatalf("format given: writing a qcow2 header at 0: %v", err)
		}
		if _, err := n.WriteAt([]byte("hello"), 100); err != nil {
			t.Fatalf("probed=%v: a sub-sector write in the first sector: %v", probed, err)
		}
		if _, err := n.WriteAt(make([]byte, 4096), 4096); err != nil {
			t.Fatalf("probed=%v: a write past the first sector: %v", probed, err)
		}
		if b := fileBytes(t, path); string(b[100:105]) != "hello" {
			t.Errorf("probed=%v: the sub-sector write did not land: %q", probed, b[100:105])
		}
	}
}
