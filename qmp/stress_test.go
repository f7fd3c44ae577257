package qmp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringblk/ringblk/host"
)

// TestStressTransactionsWithIOOnIOThreads runs random transactions —
// external and internal snapshots, some aborted by an abort action or by
// an action that fails in prepare — and IOThread moves, while every drive
// takes writes on the IOThreads. At the end: every block reads back what
// was last written to it, every node's quiesce and in-flight counts and
// every device's in-flight count are 0, no file of an aborted transaction
// is left, and closing the daemon and host leaves no goroutine behind.
func TestStressTransactionsWithIOOnIOThreads(t *testing.T) {
	iters := 40
	if testing.Short() {
		iters = 12
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	goroutines := runtime.NumGoroutine()

	if err := os.MkdirAll("/var/tmp/qmp", 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/var/tmp/qmp", "stress")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	h, err := host.New(host.Options{Contexts: 2})
	if err != nil {
		t.Fatal(err)
	}
	d := NewDaemon(h, NewRegistry())
	drives := []string{"d0", "d1", "d2"}
	for _, n := range drives {
		addQcow2(t, d, dir, n)
	}
	for _, id := range []string{"io0", "io1"} {
		if err := d.addIOThread(id); err != nil {
			t.Fatal(err)
		}
	}
	const blocks, bs = 64, 4096
	type last struct {
		mu  sync.Mutex
		seq []uint64
	}
	lasts := make([]*last, len(drives))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, n := range drives {
		lasts[i] = &last{seq: make([]uint64, blocks)}
		dev := d.nodes[n].dev // the device stays the same across snapshots
		wg.Add(1)
		go func(i int, dev *host.Device) {
			defer wg.Done()
			buf := make([]byte, bs)
			for seq := uint64(1); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				b := int((seq * 2654435761) % blocks)
				for k := 0; k < bs; k += 8 {
					binary.LittleEndian.PutUint64(buf[k:], seq<<8|uint64(i))
				}
				if _, err := dev.WriteAt(buf, int64(b*bs)); err != nil {
					t.Errorf("drive %d: write: %v", i, err)
					return
				}
				lasts[i].mu.Lock()
				lasts[i].seq[b] = seq
				lasts[i].mu.Unlock()
			}
		}(i, dev)
	}
	// A scraper reads the metrics all along (they run on the Contexts).
	pr := prometheus.NewRegistry()
	pr.MustRegister(NewMetrics(d))
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := pr.Gather(); err != nil {
				t.Errorf("gather: %v", err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	top := func(n string) string {
		for {
			b := d.nodes[n]
			if b.usedBy == "" {
				return n
			}
			n = b.usedBy
		}
	}
	nfile, nsnap := 0, 0
	applied, aborted := 0, 0
	for it := 0; it < iters; it++ {
		if rng.IntN(4) == 0 {
			n := top(drives[rng.IntN(len(drives))])
			io := NullString{Null: true}
			if k := rng.IntN(3); k < 2 {
				io = NullString{S: fmt.Sprintf("io%d", k)}
			}
			if err := withTimeout(t, "set-iothread", func() error {
				return d.setIOThread(&setIOThreadArgs{NodeName: n, IOThread: io})
			}); err != nil {
				t.Fatalf("iteration %d: set iothread: %v", it, err)
			}
			continue
		}
		var acts []TransactionAction
		used := map[string]bool{}
		var files []string
		for k := 1 + rng.IntN(3); k > 0; k-- {
			dr := drives[rng.IntN(len(drives))]
			if used[dr] {
				continue
			}
			used[dr] = true
			if rng.IntN(2) == 0 {
				nfile++
				f := filepath.Join(dir, fmt.Sprintf("o%d.qcow2", nfile))
				files = append(files, f)
				acts = append(acts, actionJSON("blockdev-snapshot-sync", SnapshotSyncArgs{NodeName: top(dr), SnapshotFile: f}))
			} else {
				nsnap++
				acts = append(acts, actionJSON("blockdev-snapshot-internal-sync", InternalSnapshotArgs{Device: top(dr), Name: fmt.Sprintf("s%d", nsnap)}))
			}
		}
		fail := ""
		switch rng.IntN(4) {
		case 0:
			fail = "Transaction aborted using Abort action"
			acts = append(acts, TransactionAction{Type: "abort"})
		case 1:
			// A prepare that fails: a snapshot onto an existing file (of a
			// drive no other action touches), or of a node that does not
			// exist.
			fail = "Cannot find device"
			target := SnapshotSyncArgs{NodeName: fmt.Sprintf("nope%d", it), SnapshotFile: filepath.Join(dir, "x.qcow2")}
			for _, dr := range drives {
				if !used[dr] {
					fail = "exists already"
					target = SnapshotSyncArgs{NodeName: top(dr), SnapshotFile: filepath.Join(dir, "d0.qcow2")}
					break
				}
			}
			acts = append(acts, actionJSON("blockdev-snapshot-sync", target))
		}
		rng.Shuffle(len(acts), func(a, b int) { acts[a], acts[b] = acts[b], acts[a] })
		err := withTimeout(t, "transaction", func() error {
			return d.Transaction(&TransactionArgs{Actions: acts})
		})
		switch {
		case fail == "" && err != nil:
			t.Fatalf("iteration %d: %v", it, err)
		case fail != "" && (err == nil || !strings.Contains(err.Error(), fail)):
			t.Fatalf("iteration %d: error %v, want %q", it, err, fail)
		case fail != "":
			aborted++
			for _, f := range files {
				if _, err := os.Stat(f); !os.IsNotExist(err) {
					t.Fatalf("iteration %d: aborted transaction left %s (%v)", it, f, err)
				}
			}
		default:
			applied++
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d transactions applied, %d aborted", applied, aborted)
	for i, n := range drives {
		dev := d.nodes[n].dev
		buf := make([]byte, bs)
		for b := 0; b < blocks; b++ {
			if _, err := dev.ReadAt(buf, int64(b*bs)); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, bs)
			if s := lasts[i].seq[b]; s != 0 {
				for k := 0; k < bs; k += 8 {
					binary.LittleEndian.PutUint64(want[k:], s<<8|uint64(i))
				}
			}
			if !bytes.Equal(buf, want) {
				t.Fatalf("drive %s block %d: read %x…, want %x…", n, b, buf[:8], want[:8])
			}
		}
		if st := dev.Stats(); st.InFlight != 0 {
			t.Errorf("drive %s: %d requests in flight", n, st.InFlight)
		}
	}
	for _, n := range h.Graph().Nodes() {
		if n.Quiesce() != 0 || n.InFlight() != 0 {
			t.Errorf("node %s: quiesce %d, in flight %d", n.Name(), n.Quiesce(), n.InFlight())
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines after close, %d before:\n%s", n, goroutines, buf[:runtime.Stack(buf, true)])
	}
}
