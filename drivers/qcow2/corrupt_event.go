package qcow2

import "github.com/ringblk/ringblk/drivers/qcow2/format"

// CorruptionReport, when set, receives the line QEMU prints when it marks
// an image corrupt ("qcow2: Marking image as corrupt: …; further
// corruption events will be suppressed"), once per image, the first time
// a request meets damaged metadata or the overlap check fires. The
// drop-in front ends set it at start, before any image is opened
// (internal/cli); nil (ringblk's own commands) prints nothing, the
// request's error names the damage.
var CorruptionReport func(msg string)

// reportCorruption words cause for CorruptionReport: QEMU's text where
// the format layer has it, ringblk's otherwise.
func reportCorruption(cause error) {
	if CorruptionReport == nil {
		return
	}
	t := format.QemuCorruptionText(cause)
	if t == "" {
		t = cause.Error()
	}
	CorruptionReport("qcow2: Marking image as corrupt: " + t + "; further corruption events will be suppressed")
}

// reportNonFatalCorruption is reportCorruption for an image that is not
// writable: QEMU reports the damage and leaves the image usable.
func reportNonFatalCorruption(cause error) {
	if CorruptionReport == nil {
		return
	}
	t := format.QemuCorruptionText(cause)
	if t == "" {
		t = cause.Error()
	}
	CorruptionReport("qcow2: Image is corrupt: " + t + "; further non-fatal corruption events will be suppressed")
}
