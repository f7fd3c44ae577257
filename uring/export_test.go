package uring

import "syscall"

// Export guts for testing.

// SQFlags returns the kernel-written SQ ring flags (IORING_SQ_*).
func (r *Ring) SQFlags() uint32 { return r.sqFlags.Load() }

// ForgetExtArg makes the ring behave as on a kernel without
// IORING_FEAT_EXT_ARG, so waits are bounded by an IORING_OP_TIMEOUT SQE.
func (r *Ring) ForgetExtArg() { r.extArg = false }

// SetupError runs setupError with kernel.io_uring_disabled read from path.
func SetupError(errno syscall.Errno, path string) error {
	saved := ioUringDisabledPath
	defer func() { ioUringDisabledPath = saved }()
	ioUringDisabledPath = path
	return setupError(errno, 8, 16, IORING_SETUP_CQSIZE)
}

// PretendKernelLacks makes io_uring_setup fail with EINVAL whenever it is
// asked for any flag in mask, as a kernel that predates those flags does,
// until the returned function is called.
func PretendKernelLacks(mask uint32) (restore func()) {
	saved := sysSetup
	sysSetup = func(entries uint32, p *ioUringParams) (int, syscall.Errno) {
		if p.flags&mask != 0 {
			return -1, syscall.EINVAL
		}
		return saved(entries, p)
	}
	return func() { sysSetup = saved }
}
