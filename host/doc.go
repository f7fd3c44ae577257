// Package host is ringblk's host API: what a VMM host or a storage
// appliance programs against, embedded as a library or through the Go
// plugin (package plugin serves exactly this API; its types are those of
// plugin/contract, so both users write the same code).
//
// A Host owns a main Context (control work: opening, closing, drains,
// Context moves) and a number of I/O Contexts, each an event loop on its
// own io_uring ring, optionally restricted to a CPU set. Images are
// opened as Devices (QEMU's BlockBackend): raw, qcow2 with its backing
// chain, or null, with QEMU's cache modes and image locks. A Device has
//
//   - Queues for asynchronous I/O from any goroutine of the host: each
//     request takes a preallocated slot and travels through lock-free
//     rings of slot indices to the queue's Context, which runs it on its
//     ring; completions come back to a callback, or to Next with the
//     queue's eventfd as the wake-up (Cloud Hypervisor's model; written
//     only once the host has drained the queue), or — in polled mode,
//     Host.Drive — the host's goroutine runs its own Context and its
//     Wait submits and reaps on its thread, with no thread hand-off.
//     Nothing on that path allocates, locks or uses a channel.
//     Plug/Unplug batch a burst into one submission.
//   - synchronous calls (io.ReaderAt, io.WriterAt, Flush, …) on top,
//     safe from any goroutine except a completion callback;
//   - geometry, resize and block status; drained sections with device
//     callbacks; Context moves; internal snapshots and live external
//     ones (the old image reopened read-only); inactivation for
//     migration;
//   - accounting (ops, bytes, errors and latency histograms per
//     operation, in-flight and held requests), readable at any time, and
//     QEMU's rerror/werror policies with an I/O status (a stop pauses
//     the device until Resume);
//   - throttling (per device or shared in named groups) and a write-cache
//     switch.
//
// Threading: every method may be called from any goroutine. Callbacks
// (QueueOptions.OnComplete on the queue's Context, DeviceCallbacks on the
// main Context) must not block or call synchronous methods; those return
// ErrInContext there rather than deadlock.
package host
