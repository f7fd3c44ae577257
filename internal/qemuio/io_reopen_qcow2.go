package qemuio

// reopen -o on a qcow2 image: the options of the last open stay (the
// session's spec) and the new ones are laid over them, except where
// QEMU's qcow2 driver drops old options a new one overrides
// (qcow2_join_options; iotest 137 depends on it):
//
//   - a new overlap-check or overlap-check.template drops every old
//     overlap-check option;
//   - a new cache-size drops the old l2-cache-size and
//     refcount-cache-size;
//   - an old cache-size is dropped unless cache-size is given again.

import (
	"strings"

	"github.com/ringblk/ringblk/drivers/chain"
)

// joinQcow2Reopen removes from old (the session's spec) what the reopen
// options given override, before given is laid over it.
func joinQcow2Reopen(old, given chain.Spec) {
	if old == nil {
		return
	}
	_, o := given["overlap-check"]
	_, t := given["overlap-check.template"]
	for k := range old {
		switch {
		case (o || t) && (k == "overlap-check" || strings.HasPrefix(k, "overlap-check.")):
			delete(old, k)
		case k == "l2-cache-size" || k == "refcount-cache-size":
			if _, ok := given["cache-size"]; ok {
				delete(old, k)
			}
		case k == "cache-size":
			if _, ok := given["cache-size"]; !ok {
				delete(old, k)
			}
		}
	}
}
