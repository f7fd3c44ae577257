// Package proctest holds facts about the test process itself that several
// packages' tests read: the context switches of its threads, from
// /proc/self/task. Tests only.
package proctest

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// OtherThreadSwitches sums the context switches (voluntary and not) of
// every thread of the process except the one with thread id skip (0: skip
// none). A thread that exits while it is read is left out.
func OtherThreadSwitches(skip int) (int64, error) {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, err
	}
	var n int64
	for _, e := range ents {
		if e.Name() == strconv.Itoa(skip) {
			continue
		}
		b, err := os.ReadFile("/proc/self/task/" + e.Name() + "/status")
		if err != nil {
			continue // the thread exited
		}
		for _, l := range bytes.Split(b, []byte("\n")) {
			var v int64
			if _, err := fmt.Sscanf(string(l), "voluntary_ctxt_switches: %d", &v); err == nil {
				n += v
			} else if _, err := fmt.Sscanf(string(l), "nonvoluntary_ctxt_switches: %d", &v); err == nil {
				n += v
			}
		}
	}
	return n, nil
}
