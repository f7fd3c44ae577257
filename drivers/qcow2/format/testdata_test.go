package format_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/qcow2/format/formattest"
)

// TestQcow2TestdataMatchesQemu opens every checked-in image and compares
// our mapping with the `qemu-img map` output and our guest content with
// the sha256 of `qemu-img convert -O raw`, both recorded by gen.sh.
func TestQcow2TestdataMatchesQemu(t *testing.T) {
	for _, name := range testImages {
		t.Run(name, func(t *testing.T) {
			b := loadImage(t, name)
			im := openBytes(t, b, format.Options{ReadWrite: true})
			exts, err := im.Map(nil, 0, im.Geometry.Size)
			if err != nil {
				t.Fatalf("Map: %v", err)
			}
			mapJSON, err := os.ReadFile(formattest.DataPath(name + ".map.json"))
			if err != nil {
				t.Fatal(err)
			}
			compareMaps(t, exts, mapJSON)

			var backing *bytes.Reader
			if im.Header.BackingFile != "" {
				// ovl's backing file is base.qcow2: read it through our
				// own reader too, flattened.
				base := strings.TrimSuffix(im.Header.BackingFile, ".qcow2")
				bim := openBytes(t, loadImage(t, base), format.Options{})
				flat := make([]byte, bim.Geometry.Size)
				if _, err := bim.ReadAt(flat, 0, nil); err != nil {
					t.Fatalf("backing ReadAt: %v", err)
				}
				backing = bytes.NewReader(flat)
			}
			content := make([]byte, im.Geometry.Size)
			var rerr error
			if backing != nil {
				_, rerr = im.ReadAt(content, 0, backing)
			} else {
				_, rerr = im.ReadAt(content, 0, nil)
			}
			if rerr != nil {
				t.Fatalf("ReadAt: %v", rerr)
			}
			want, err := os.ReadFile(formattest.DataPath(name + ".raw.sha256"))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(content)
			if got := hex.EncodeToString(sum[:]); got != strings.TrimSpace(string(want)) {
				t.Errorf("guest content sha256 %s, qemu-img convert gave %s", got, strings.TrimSpace(string(want)))
			}
		})
	}
}

// TestQcow2HeaderReencodesQemuImages checks that MarshalBinary of a parsed
// QEMU image reproduces QEMU's header bytes exactly (we lay out extensions
// and the backing name as qcow2_update_header does), and that the rest of
// the first cluster is zero.
func TestQcow2HeaderReencodesQemuImages(t *testing.T) {
	for _, name := range testImages {
		t.Run(name, func(t *testing.T) {
			b := loadImage(t, name)
			h, err := format.ParseHeader(b)
			if err != nil {
				t.Fatal(err)
			}
			enc, err := h.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(enc, b[:len(enc)]) {
				t.Fatalf("re-encoded header differs from QEMU's\nours: %x\nqemu: %x", enc, b[:len(enc)])
			}
			cs := int(h.ClusterSize())
			if rest := b[len(enc):min(cs, len(b))]; bytes.Count(rest, []byte{0}) != len(rest) {
				t.Errorf("nonzero bytes after the header in the first cluster; MarshalBinary would drop them")
			}
		})
	}
}

// TestQcow2TestdataHeaders checks header fields against what gen.sh asked
// qemu-img for (the option each image was created with).
func TestQcow2TestdataHeaders(t *testing.T) {
	type want struct {
		version, clusterBits, refcountOrder, headerLength uint32
		incompat, compat, autoclear                       uint64
		backing, backingFmt                               string
		snapshots                                         int
		featureTable                                      bool
	}
	v3 := want{3, 16, 4, 112, 0, 0, 0, "", "", 0, true}
	cases := map[string]want{
		"v3":     v3,
		"v2":     {2, 16, 4, 72, 0, 0, 0, "", "", 0, false},
		"c512":   {3, 9, 4, 112, 0, 0, 0, "", "", 0, false},
		"c2m":    {3, 21, 4, 112, 0, 0, 0, "", "", 0, true},
		"rc1":    {3, 16, 0, 112, 0, 0, 0, "", "", 0, true},
		"rc64":   {3, 16, 6, 112, 0, 0, 0, "", "", 0, true},
		"lazy":   {3, 16, 4, 112, 0, format.CompatLazyRefcounts, 0, "", "", 0, true},
		"ext":    {3, 16, 4, 112, format.IncompatExtendedL2, 0, 0, "", "", 0, true},
		"ovl":    {3, 16, 4, 112, 0, 0, 0, "base.qcow2", "qcow2", 0, true},
		"zstd":   {3, 16, 4, 112, format.IncompatCompressionType, 0, 0, "", "", 0, true},
		"snap":   {3, 16, 4, 112, 0, 0, 0, "", "", 1, true},
		"bitmap": {3, 16, 4, 112, 0, 0, format.AutoclearBitmaps, "", "", 0, true},
	}
	for name, w := range cases {
		t.Run(name, func(t *testing.T) {
			im := openBytes(t, loadImage(t, name), format.Options{})
			h := im.Header
			got := want{h.Version, h.ClusterBits, h.RefcountOrder, h.HeaderLength,
				h.IncompatibleFeatures, h.CompatibleFeatures, h.AutoclearFeatures,
				h.BackingFile, h.BackingFormat, len(im.Snapshots), h.FeatureNames != nil}
			if got != w {
				t.Errorf("header %+v, want %+v", got, w)
			}
			if w.featureTable {
				def := format.DefaultFeatureNames()
				if len(h.FeatureNames) != len(def) {
					t.Fatalf("feature table %v, want QEMU's %v", h.FeatureNames, def)
				}
				for i := range def {
					if h.FeatureNames[i] != def[i] {
						t.Errorf("feature %d = %+v, want %+v", i, h.FeatureNames[i], def[i])
					}
				}
			}
		})
	}
}
