package uring

import (
	"fmt"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Registered resources: a fixed-file table, fixed buffers, the ring's own fd,
// and the io-wq worker limits. All of this is cold-path code; only
// UpdateFile is expected while I/O runs, and it does not allocate.
//
// On a SINGLE_ISSUER ring that has been bound (see New), io_uring_register is
// accepted only from the owner thread, like io_uring_enter.

// RegisterFiles creates a registered-file table of n empty slots. SQEs name a
// slot instead of an fd with SQE.SetFixedFile, after UpdateFile filled it. It
// uses a sparse table (IORING_REGISTER_FILES2 with IORING_RSRC_REGISTER_SPARSE,
// Linux 5.19+) and otherwise registers an array of -1 entries.
func (r *Ring) RegisterFiles(n int) error {
	if r.closed {
		return ErrClosed
	}
	if n <= 0 || n > maxFixedFiles {
		return fmt.Errorf("uring: RegisterFiles(%d): the table size must be between 1 and %d", n, maxFixedFiles)
	}
	if r.files != 0 {
		return fmt.Errorf("uring: RegisterFiles(%d): a table of %d files is already registered", n, r.files)
	}
	rr := &rsrcRegister{nr: uint32(n), flags: IORING_RSRC_REGISTER_SPARSE}
	// SAFETY: rr is live until the call returns; the kernel copies it (no
	// fd array: the table starts empty).
	_, errno := sysRegister(r.fd, IORING_REGISTER_FILES2, unsafe.Pointer(rr), uint32(unsafe.Sizeof(*rr)))
	if errno == unix.EINVAL {
		// Before 5.19 (no sparse flag) or 5.13 (no FILES2): -1 marks an
		// empty slot in the classic array registration.
		fds := make([]int32, n)
		for i := range fds {
			fds[i] = -1
		}
		// SAFETY: fds holds n int32s, kept alive across the call by the
		// KeepAlive below; the kernel copies them.
		_, errno = sysRegister(r.fd, IORING_REGISTER_FILES, unsafe.Pointer(&fds[0]), uint32(n))
		runtime.KeepAlive(fds)
	}
	if errno != 0 {
		return r.registerError(fmt.Sprintf("RegisterFiles(%d)", n), errno)
	}
	r.files = n
	return nil
}

// UpdateFile points registered slot at fd; fd -1 empties the slot. Operations
// already submitted keep the file they resolved. The caller keeps fd open
// while any operation naming the slot is in flight. UpdateFile does not
// allocate.
func (r *Ring) UpdateFile(slot int, fd int) error {
	if r.closed {
		return ErrClosed
	}
	if slot < 0 || slot >= r.files {
		return fmt.Errorf("uring: UpdateFile(%d): slot out of range (%d registered files)", slot, r.files)
	}
	if fd < -1 || fd > 1<<31-1 {
		return fmt.Errorf("uring: UpdateFile(%d, %d): bad fd", slot, fd)
	}
	r.fileFd = int32(fd)
	// SAFETY: fileFd and update are fields of r (heap, alive across the
	// call); the kernel reads both during the call only.
	r.update = rsrcUpdate{offset: uint32(slot), data: uint64(uintptr(unsafe.Pointer(&r.fileFd)))}
	n, errno := sysRegister(r.fd, IORING_REGISTER_FILES_UPDATE, unsafe.Pointer(&r.update), 1)
	if errno != 0 {
		return r.registerError("UpdateFile", errno)
	}
	if n != 1 {
		return fmt.Errorf("uring: UpdateFile(%d, %d): the kernel updated %d slots", slot, fd, n)
	}
	return nil
}

// UnregisterFiles drops the registered-file table.
func (r *Ring) UnregisterFiles() error {
	if r.closed {
		return ErrClosed
	}
	if _, errno := sysRegister(r.fd, IORING_UNREGISTER_FILES, nil, 0); errno != 0 {
		return r.registerError("UnregisterFiles", errno)
	}
	r.files = 0
	return nil
}

// RegisterBuffers registers bufs for READ_FIXED and WRITE_FIXED; bufs[i]
// gets index i, and a fixed operation may use any sub-slice of it. The kernel
// pins the pages, so the memory must not belong to the Go heap (the GC could
// free and reuse it): mmap it. At most 16384 buffers of at most 1 GiB each.
func (r *Ring) RegisterBuffers(bufs [][]byte) error {
	if r.closed {
		return ErrClosed
	}
	if len(bufs) == 0 || len(bufs) > maxRegBuffers {
		return fmt.Errorf("uring: RegisterBuffers: %d buffers; must be between 1 and %d", len(bufs), maxRegBuffers)
	}
	if r.buffers != 0 {
		return fmt.Errorf("uring: RegisterBuffers: %d buffers are already registered", r.buffers)
	}
	iovs := make([]Iovec, len(bufs))
	for i, b := range bufs {
		if len(b) == 0 || len(b) > maxBufferSize {
			return fmt.Errorf("uring: RegisterBuffers: buffer %d is %d bytes; must be between 1 byte and 1 GiB", i, len(b))
		}
		iovs[i] = Iovec{Base: &b[0], Len: uint64(len(b))}
	}
	// SAFETY: iovs (kept alive by the KeepAlive below) describes memory the
	// caller owns; the kernel copies the iovecs and pins the pages they name.
	_, errno := sysRegister(r.fd, IORING_REGISTER_BUFFERS, unsafe.Pointer(&iovs[0]), uint32(len(iovs)))
	runtime.KeepAlive(iovs)
	if errno == unix.ENOMEM {
		return fmt.Errorf("uring: RegisterBuffers: the kernel could not pin the buffers (locked memory is limited by RLIMIT_MEMLOCK without CAP_IPC_LOCK: raise ulimit -l): %w", errno)
	}
	if errno != 0 {
		return r.registerError("RegisterBuffers", errno)
	}
	r.buffers = len(bufs)
	return nil
}

// UnregisterBuffers drops the registered buffers.
func (r *Ring) UnregisterBuffers() error {
	if r.closed {
		return ErrClosed
	}
	if _, errno := sysRegister(r.fd, IORING_UNREGISTER_BUFFERS, nil, 0); errno != 0 {
		return r.registerError("UnregisterBuffers", errno)
	}
	r.buffers = 0
	return nil
}

// SetIOWQMaxWorkers caps the kernel's io-wq worker threads for this ring
// (IORING_REGISTER_IOWQ_MAX_WORKERS, Linux 5.15+): bounded workers serve
// regular file and block I/O, unbounded ones serve I/O that may wait forever
// (sockets, pipes). 0 leaves a limit unchanged. It returns the previous
// limits of the calling thread's io-wq, which are 0 if this thread has not
// submitted to the ring yet. Without a cap, a stalled device can make the
// kernel spawn workers up to RLIMIT_NPROC.
func (r *Ring) SetIOWQMaxWorkers(bounded, unbounded int) (prevBounded, prevUnbounded int, err error) {
	if r.closed {
		return 0, 0, ErrClosed
	}
	if bounded < 0 || unbounded < 0 || bounded > 1<<31-1 || unbounded > 1<<31-1 {
		return 0, 0, fmt.Errorf("uring: SetIOWQMaxWorkers(%d, %d): limits must be >= 0", bounded, unbounded)
	}
	r.workers = [2]uint32{uint32(bounded), uint32(unbounded)}
	// SAFETY: workers is a field of r; the kernel reads the new limits and
	// writes the old ones back during the call.
	if _, errno := sysRegister(r.fd, IORING_REGISTER_IOWQ_MAX_WORKERS, unsafe.Pointer(&r.workers), 2); errno != 0 {
		return 0, 0, r.registerError("SetIOWQMaxWorkers", errno)
	}
	return int(r.workers[0]), int(r.workers[1]), nil
}

// SetWorkerAffinity sets the CPUs on which the calling thread's io-wq
// workers run (IORING_REGISTER_IOWQ_AFF, Linux 5.14+). Without it a worker
// inherits the affinity of the thread that made it: an owner pinned to one
// CPU gets its workers pinned to that CPU too, so on a device whose reads
// the kernel cannot issue without blocking (zram, and any driver without
// REQ_NOWAIT) every punted request runs on the owner's own CPU, taking turns
// with the owner instead of running beside it. The io-wq is per thread and
// exists once the thread has used the ring (bind registers the ring fd,
// which creates it); call it from the owner thread. set must be a subset of
// the CPUs the thread's cpuset allows.
func (r *Ring) SetWorkerAffinity(set *unix.CPUSet) error {
	if r.closed {
		return ErrClosed
	}
	if !r.bound {
		if err := r.bind(); err != nil { // creates the thread's io-wq
			return err
		}
	}
	r.aff = *set
	// SAFETY: aff is a field of r; the kernel copies the mask during the call.
	if _, errno := sysRegister(r.fd, IORING_REGISTER_IOWQ_AFF, unsafe.Pointer(&r.aff), uint32(unsafe.Sizeof(r.aff))); errno != 0 {
		return r.registerError("SetWorkerAffinity", errno)
	}
	return nil
}

// registerRingFd registers the ring fd in the calling thread's io_uring
// table (Linux 5.18+) and switches enter to the registered index. Any
// failure leaves enter on the plain fd.
func (r *Ring) registerRingFd() {
	r.update = rsrcUpdate{offset: ^uint32(0), data: uint64(r.fd)} // offset -1: kernel picks the index
	// SAFETY: update is a field of r; the kernel reads it and writes the
	// chosen index back into it during the call.
	n, errno := sysRegister(r.fd, IORING_REGISTER_RING_FDS, unsafe.Pointer(&r.update), 1)
	if errno != 0 || n != 1 {
		return
	}
	r.ringIndex = int(r.update.offset)
	r.enterFd = uintptr(r.ringIndex)
	r.enterFlags = IORING_ENTER_REGISTERED_RING
	r.params.RegisteredRing = true
}

// unregisterRingFd removes the ring fd from the owner thread's table. It
// must run on that thread: the index means nothing elsewhere.
func (r *Ring) unregisterRingFd() {
	r.update = rsrcUpdate{offset: uint32(r.ringIndex)}
	// SAFETY: update is a field of r, read by the kernel during the call.
	_, _ = sysRegister(r.fd, IORING_UNREGISTER_RING_FDS, unsafe.Pointer(&r.update), 1)
	r.ringIndex = -1
	r.params.RegisteredRing = false
}

// registerError maps an io_uring_register errno for operation op.
func (r *Ring) registerError(op string, errno syscall.Errno) error {
	switch errno {
	case unix.EEXIST:
		if r.setupFlags&IORING_SETUP_SINGLE_ISSUER != 0 && r.bound {
			return fmt.Errorf("uring: %s: %w (register from thread %d, ring bound to thread %d)", op, ErrWrongThread, unix.Gettid(), r.ownerTid)
		}
	case unix.EBUSY:
		return fmt.Errorf("uring: %s: the resource is already registered or in use: %w", op, errno)
	case unix.EMFILE:
		return fmt.Errorf("uring: %s: more files than RLIMIT_NOFILE allows: %w", op, errno)
	}
	return fmt.Errorf("uring: %s: %w", op, errno)
}
