package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestPayloadDedupeCompress: dedupe_percentage=50 makes about half the
// writes copies of earlier ones, buffer_compress_percentage=50 zeroes the
// second half of every 512-byte chunk; working_set copies come from a set
// of the given share of the blocks; without the options writes are not
// rewritten.
func TestPayloadDedupeCompress(t *testing.T) {
	spec := mustParse(t, "--name=d", "--rw=write", "--size=4m", "--bs=4k", "--dedupe_percentage=50", "--buffer_compress_percentage=50")
	p := newPayload(spec.Jobs[0], 0, 4<<20)
	seen := map[string]bool{}
	const n = 1000
	b := make([]byte, 4096)
	for i := 0; i < n; i++ {
		p.fill(b)
		for c := 0; c < len(b); c += 512 {
			if !bytes.Equal(b[c+256:c+512], make([]byte, 256)) || bytes.Equal(b[c:c+256], make([]byte, 256)) {
				t.Fatalf("write %d chunk %d: not half random, half zeros", i, c/512)
			}
		}
		seen[string(b)] = true
	}
	if u := len(seen); u < n*40/100 || u > n*60/100 {
		t.Errorf("dedupe_percentage=50: %d distinct blocks of %d writes", u, n)
	}

	spec = mustParse(t, "--name=w", "--rw=write", "--size=4m", "--bs=4k", "--dedupe_percentage=100",
		"--dedupe_mode=working_set", "--dedupe_working_set_percentage=1")
	p = newPayload(spec.Jobs[0], 0, 4<<20)
	seen = map[string]bool{}
	for i := 0; i < n; i++ {
		p.fill(b)
		seen[string(b)] = true
	}
	if u := len(seen); u > 10 { // 1% of 1024 blocks
		t.Errorf("working set of 10 blocks: %d distinct", u)
	}
	if newPayload(mustParse(t, "--name=x", "--rw=write").Jobs[0], 0, 1<<20) != nil {
		t.Error("a payload generator without dedupe or compress")
	}
}

// TestJSONNoEmptyJobOptions: like fio, a job that sets no option of its
// own has no "job options" object; one that does has it.
func TestJSONNoEmptyJobOptions(t *testing.T) {
	dir := benchDir(t)
	file := filepath.Join(dir, "j.fio")
	if err := os.WriteFile(file, []byte("[global]\nioengine=ringblk\nformat=null\nsize=1m\nrw=write\n[a]\n[b]\nbs=8k\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := Main([]string{"--output-format=json", file}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var r struct {
		Jobs []map[string]any `json:"jobs"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil || len(r.Jobs) != 2 {
		t.Fatalf("%v: %s", err, out.String())
	}
	if _, ok := r.Jobs[0]["job options"]; ok {
		t.Error("job a (no options of its own) has \"job options\"")
	}
	if _, ok := r.Jobs[1]["job options"]; !ok {
		t.Error("job b (bs=8k) has no \"job options\"")
	}
}
