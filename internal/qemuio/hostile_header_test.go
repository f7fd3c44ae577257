package qemuio

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestHostileHeaderAsQemuIO: qcow2 headers QEMU refuses at open are
// refused in its words, without qemu-img's "Could not open" prefix
// (iotest 080's header sections): each case pokes a fresh image and
// reads through qemu-io and through ours as qemu-io.
func TestHostileHeaderAsQemuIO(t *testing.T) {
	clitest.NeedQemu(t, "qemu-io", "qemu-img")
	dir := t.TempDir()
	type poke struct {
		off int64
		b   string
	}
	for _, c := range []struct {
		name  string
		pokes []poke
	}{
		{"huge header", []poke{{100, "\xff\xff\xff\xff"}}},
		{"header past cluster", []poke{{100, "\x7f\xff\xff\xff"}}},
		{"backing offset", []poke{{8, "\xff\xff\xff\xff\xff\xff\xff\xff"}}},
		// The extension header straddles the end of its area.
		{"extension straddles", []poke{{8, "\x00\x00\x00\x00\x00\x00\x00\x74"}, {112, "\x12\x34\x56\x78"}, {116, "\x7f\xff\xff\xff"}}},
		{"extension too large", []poke{{112, "\x12\x34\x56\x78"}, {116, "\x7f\xff\xff\xff"}}},
		{"refcount table clusters", []poke{{56, "\x00\x02\x00\x01"}}},
		{"refcount table offset", []poke{{48, "\x12\x34\x56\x78\x90\xab\xcd\xef"}}},
		{"refcount table end", []poke{{48, "\xff\xff\xff\xff\xff\xff\x00\x00"}, {56, "\x00\x00\x00\x7f"}}},
		{"snapshots", []poke{{60, "\x7f\xff\xff\xff"}}},
		{"snapshots offset", []poke{{64, "\x12\x34\x56\x78\x90\xab\xcd\xef"}}},
		{"l1 size", []poke{{36, "\x7f\xff\xff\xff"}}},
		{"l1 offset", []poke{{40, "\x7f\xff\xff\xff\xff\xff\x00\x00"}, {36, "\x00\x00\xff\xff"}}},
		{"l1 too small", []poke{{36, "\x00\x00\x00\x00"}}},
		{"image too big", []poke{{24, "\x10\x00\x00\x00\x00\x00\x00\x00"}}},
		{"backing name size", []poke{{8, "\x00\x00\x00\x00\x00\x00\x10\x00"}, {16, "\xff\xff\xff\xff"}}},
	} {
		var outs [2]string
		var codes [2]int
		for i, who := range []string{"q", "o"} {
			img := filepath.Join(dir, who+".qcow2")
			os.Remove(img)
			clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
			f, err := os.OpenFile(img, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range c.pokes {
				if _, err := f.WriteAt([]byte(p.b), p.off); err != nil {
					t.Fatal(err)
				}
			}
			f.Close()
			args := []string{"-c", "read 0 512", img}
			if i == 0 {
				o, e, code := clitest.QemuIO(t, args...)
				outs[i], codes[i] = o+e, code
			} else {
				outs[i], codes[i] = runAsQemuIO(t, args...)
			}
			outs[i] = strings.Join(normIO(strings.ReplaceAll(outs[i], img, "IMG")), "\n")
		}
		if outs[0] != outs[1] || codes[0] != codes[1] {
			t.Errorf("%s: ours (exit %d):\n%s\nqemu-io (exit %d):\n%s", c.name, codes[1], outs[1], codes[0], outs[0])
		}
	}
}
