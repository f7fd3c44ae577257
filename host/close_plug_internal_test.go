package host

import (
	"strings"
	"testing"
	"time"

	"github.com/ringblk/ringblk/plugin/contract"
)

// TestCloseIssuesLatePluggedSubmission: a submission that claims its slot
// before Close sets closed but publishes it after Close's submission pass,
// into a queue the host holds plugged, is issued by Close itself, which
// then returns. Close ran its submission step once and then only waited,
// so it waited for an Unplug that a host closing the queue need never
// make. The race is narrow (between a submission's claim and its
// publish), so the test takes the two steps of submit apart: the claim
// before Close, the publish once Close waits.
func TestCloseIssuesLatePluggedSubmission(t *testing.T) {
	h, err := New(Options{})
	if err != nil {
		if strings.Contains(err.Error(), "ring setup") {
			t.Skipf("io_uring unavailable: %v", err)
		}
		t.Fatal(err)
	}
	defer h.Close()
	d, err := h.OpenDevice("null-co://", OpenOptions{Format: "null", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var got []Completion
	q, err := d.Queue(QueueOptions{Depth: 4, OnComplete: func(c Completion) { got = append(got, c) }})
	if err != nil {
		t.Fatal(err)
	}
	q.Plug()
	i, err := q.claim()
	if err != nil {
		t.Fatal(err)
	}
	s := &q.slots[i]
	s.op, s.off, s.n, s.ud = contract.OpRead, 0, 512, 7
	s.buf1[0] = make([]byte, 512)
	s.iov = s.buf1[:]
	closed := make(chan error, 1)
	go func() { closed <- q.Close() }()
	for !q.closed.Load() {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // Close's own pass has run: it waits
	q.publish(i)
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		q.Unplug() // what Close waited for
		<-closed
		t.Fatal("Close of a plugged queue waited for Unplug: a submission that landed after its submission pass was never issued")
	}
	if len(got) != 1 || got[0].UserData != 7 || got[0].Err != nil || got[0].Bytes != 512 {
		t.Fatalf("completions %+v, want the read (user data 7) done", got)
	}
	q.Unplug() // after Close: does nothing
}
