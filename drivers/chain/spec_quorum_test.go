package chain

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestSpecQuorum: driver=quorum over three raw files votes on reads (one
// child that differs is outvoted at threshold 2; with threshold 3 the
// read fails), writes reach every child, and the vote threshold is
// required and checked.
func TestSpecQuorum(t *testing.T) {
	dir := t.TempDir()
	var files []string
	for i := 0; i < 3; i++ {
		p := filepath.Join(dir, "c"+string(rune('0'+i)))
		data := bytes.Repeat([]byte{7}, 64<<10)
		if i == 2 {
			data[100] = 9 // the odd one out
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	spec := func(threshold string) Spec {
		s := Spec{"driver": "quorum"}
		if threshold != "" {
			s["vote-threshold"] = threshold
		}
		for i, f := range files {
			s["children."+string(rune('0'+i))+".driver"] = "file"
			s["children."+string(rune('0'+i))+".filename"] = f
		}
		return s
	}
	g := newGraph(t)
	im, err := OpenSpec(g, spec("2"), Options{Name: "q"})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := im.Node.ReadAt(buf, 0); err != nil || buf[100] != 7 {
		t.Errorf("read at threshold 2: %v, byte %d (want the majority's 7)", err, buf[100])
	}
	if _, err := im.Node.WriteAt(bytes.Repeat([]byte{5}, 512), 0); err != nil {
		t.Fatal(err)
	}
	im.Node.Unref()
	for _, f := range files {
		if b, _ := os.ReadFile(f); b[0] != 5 || b[100] != 5 {
			t.Errorf("%s: the write did not reach it", f)
		}
	}
	if err := os.WriteFile(files[2], append(bytes.Repeat([]byte{5}, 512), bytes.Repeat([]byte{8}, 64<<10-512)...), 0o644); err != nil {
		t.Fatal(err)
	}
	im, err = OpenSpec(g, spec("3"), Options{Name: "q3", ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.Node.ReadAt(buf, 4096); err == nil {
		t.Error("read at threshold 3 with a differing child succeeded")
	}
	im.Node.Unref()
	for th, want := range map[string]string{"": "Parameter 'vote-threshold' is missing", "4": "threshold 4 is not between 1 and the number of children (3)"} {
		if _, err := OpenSpec(g, spec(th), Options{Name: "bad"}); err == nil || err.Error() != want {
			t.Errorf("vote-threshold %q: %v, want %q", th, err, want)
		}
	}
}
