package qcow2

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// textLike returns n bytes of words drawn from a small vocabulary: it
// compresses about as well as text (3-4x with zlib).
func textLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	words := make([]string, 300)
	for i := range words {
		w := make([]byte, 2+rng.IntN(8))
		for j := range w {
			w[j] = byte('a' + rng.IntN(26))
		}
		words[i] = string(w)
	}
	b := make([]byte, 0, n+16)
	for len(b) < n {
		b = append(b, words[rng.IntN(len(words))]...)
		b = append(b, ' ')
	}
	return b[:n]
}

// TestQcow2CompressedWritesPackAsQemu: compressed writes are packed into
// shared host clusters and compressed about as well as qemu-img convert
// -c does on the same data (zlib and zstd), and QEMU reads the result:
// qemu-img check is clean (refcounts of shared clusters right), the data
// compares equal, and rewriting some compressed clusters (freeing their
// bytes) keeps check clean.
func TestQcow2CompressedWritesPackAsQemu(t *testing.T) {
	needQemu(t)
	const cs, size = 65536, 4 << 20
	ref := textLike(size, 1)
	for _, ct := range []string{"zlib", "zstd"} {
		t.Run(ct, func(t *testing.T) {
			dir := t.TempDir()
			raw := filepath.Join(dir, "ref.raw")
			if err := os.WriteFile(raw, ref, 0o644); err != nil {
				t.Fatal(err)
			}
			opts := fmt.Sprintf("cluster_size=%d,compression_type=%s", cs, ct)
			theirs := filepath.Join(dir, "qemu.qcow2")
			qemuImg(t, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, raw, theirs)
			img := filepath.Join(dir, "c.qcow2")
			qemuCreate(t, img, opts, size)
			e := newTestEnv(t)
			n := e.mustOpen(img, false)
			for off := 0; off < size; off += 4 * cs {
				if _, err := n.WriteCompressed(ref[off:off+4*cs], int64(off)); err != nil {
					t.Fatalf("compressed write at %d: %v", off, err)
				}
			}
			if err := n.Unref(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, img)
			qemuCompare(t, img, ref)
			if q := qemuCheckResult(t, img); q.CompressedClusters != size/cs {
				t.Errorf("compressed clusters %d, want %d", q.CompressedClusters, size/cs)
			}
			ours, qs := fileSize(t, img), fileSize(t, theirs)
			t.Logf("%s: ringblk %d bytes, qemu-img convert -c %d bytes (%.2fx)", ct, ours, qs, float64(ours)/float64(qs))
			if float64(ours) > 1.15*float64(qs) {
				t.Errorf("%s: ringblk's image is %d bytes, qemu-img's %d: more than 1.15x", ct, ours, qs)
			}
			// Overwrite a few compressed clusters plainly and compressed:
			// their shared host clusters lose exactly their references.
			n = e.mustOpen(img, false)
			patch := textLike(cs, 2)
			for _, off := range []int64{cs, 5 * cs, 20 * cs} {
				if _, err := n.WriteAt(patch[:1000], off+100); err != nil {
					t.Fatal(err)
				}
				copy(ref[off+100:], patch[:1000])
			}
			if _, err := n.WriteCompressed(patch, 30*cs); err != nil {
				t.Fatal(err)
			}
			copy(ref[30*cs:], patch)
			if err := n.Unref(); err != nil {
				t.Fatal(err)
			}
			qemuCheck(t, img)
			qemuCompare(t, img, ref)
		})
	}
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
