package bench

import (
	"os"
	"strings"
	"testing"
	"time"
)

// FuzzParseJobText: any job file text either parses into a spec or is
// refused with an error; it never panics, and parsing stays fast (no
// option makes the parser loop or allocate without bound).
func FuzzParseJobText(f *testing.F) {
	if b, err := os.ReadFile("testdata/fio-3.33-randrw.fio"); err == nil {
		f.Add(string(b))
	}
	f.Add("[global]\nioengine=ringblk\nfilename=/tmp/x\nsize=1m\n[a]\nrw=randread\nbs=4k\niodepth=32\n")
	f.Add("[j]\nrw=randrw\nrwmixread=70\nbs=4k-64k\nsize=10%\nruntime=1\ntime_based\nnumjobs=2\n")
	f.Add("[j]\nverify=crc32c\nrw=write\nbsrange=512-1m\noffset=1g\nsize=2g\nstartdelay=1\n")
	f.Add("[j]\nbs=99999999999999999999k\n")
	f.Fuzz(func(t *testing.T, text string) {
		start := time.Now()
		spec, err := ParseJobText("fuzz.fio", text)
		if err == nil && spec == nil {
			t.Fatal("nil spec without an error")
		}
		if err != nil && strings.TrimSpace(err.Error()) == "" {
			t.Fatal("empty error message")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("parsing %d bytes took %v", len(text), d)
		}
	})
}
