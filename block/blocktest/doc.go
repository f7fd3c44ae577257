// Package blocktest is test support for package block and the drivers: the
// counting test driver of drain.md §2.1, a fault-injection filter node in
// the manner of QEMU's blkdebug, a null driver, a minimal job that honours
// pause and resume, and Env, the scenario harness that owns a main Context,
// IOThreads and a graph. Only tests import it.
package blocktest
