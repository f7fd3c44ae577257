// Package job runs block jobs — mirror, backup, stream, commit — on the
// block layer's drain (docs/design/jobs.md). It is a front end of block:
// a job owns edges to the nodes it works on, with a ChildClass of kind
// block.JobParent, so a drained section of any of those nodes pauses the
// job at its next pause point and waits until it sits there, and a Context
// move of any of them moves the job (drain.md §1.12, seeds 000 and 003).
//
// # States
//
// Status follows QEMU's job state machine (CanTransition, Allowed):
//
//	created ──start──▶ running ◀──▶ paused         (pause point, drain or user)
//	   │                  │  ▲
//	   │                  ▼  │
//	   │                ready ◀──▶ standby          (mirror in sync)
//	   │                  │
//	   │                  ▼
//	   │      waiting ──▶ pending ──finalize──▶ concluded ──dismiss──▶ null
//	   │         │          │                      ▲
//	   └────────▶└──────────┴──▶ aborting ─────────┘
//
// Auto-finalize and auto-dismiss are the default (Options.ManualFinalize,
// ManualDismiss turn them off).
//
// # The run loop
//
// A job's Driver does its work in Iterate, which the framework calls on the
// job's Context inside a fresh coroutine (aio.Co) each time, so a job can
// move between Contexts at any pause point. Between two calls the loop
// checks for cancellation, parks at the pause point while any pause is in
// force, and waits for the speed limit on a timer of its Context (no
// goroutine sleeps). While Iterate runs the job is busy: a drain waits for
// it, and for its requests, which count in the in-flight counters of the
// nodes they go to.
//
// The end of the run (success, error, cancel) moves to the main Context:
// Prepare, then Commit or Abort, then Clean, then the job's edges go and it
// concludes. I/O errors are classified by IOError (source or target) and
// handled by the job's error policies (report, ignore, stop, enospc); every
// error is kept for query (Errors, Info). Events (Event) report status
// changes and the BLOCK_JOB_* events for a QMP front end.
package job
