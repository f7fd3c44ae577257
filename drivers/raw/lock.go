package raw

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Image locking, compatible with QEMU 7.2's file driver (file-posix.c).
//
// QEMU describes what a user of an image does with permission bits, in this
// order (include/block/block-common.h, BLK_PERM_*):
//
//	bit 0 consistent read   bit 1 write   bit 2 write unchanged   bit 3 resize
//
// For each permission i an opener holds, it takes a shared OFD lock
// (F_OFD_SETLK, F_RDLCK) on byte 100+i; for each permission it does not let
// others hold, a shared lock on byte 200+i. Then it checks the other side:
// byte 200+i must be unlocked by anyone else for every permission it holds,
// and byte 100+i for every permission it refuses to share. "Unlocked by
// anyone else" is an F_OFD_GETLK probe for an exclusive lock: locks of the
// same open file description never conflict with it, so our own locks do
// not count. All locks are shared, so any number of compatible users can
// coexist and the first incompatible one is refused at open.
//
// What we take, modelled on a QEMU guest device (share-rw=off), which is
// the strictest user QEMU has:
//
//	read-write: hold consistent read, write, resize (100, 101, 103);
//	            refuse others write and resize (201, 203)
//	read-only:  hold consistent read (100); refuse write and resize (201, 203)
//	ShareRW:    refuse nothing
//
// So a second ringblk writer fails on byte 201, a qemu-io/qemu-img that
// wants to write fails on our 201 ("Failed to get "write" lock"), and we
// refuse to write an image a running VM holds (its 201), or one any QEMU
// user holds for writing when we refuse writers (its 101).
//
// The locks live on the open file description, so they go away with the
// driver's fd; nothing needs unlocking by hand.
const (
	lockPermBase   = 100
	lockSharedBase = 200
)

const (
	permConsistentRead = 1 << iota
	permWrite
	permWriteUnchanged
	permResize
	permCount = 4
)

var permNames = [permCount]string{"consistent read", "write", "write unchanged", "resize"}

// ErrLocked matches (errors.Is) an open refused because another process
// holds a conflicting lock on the image.
var ErrLocked = errors.New("raw: image is locked by another user")

// LockError reports the first conflicting lock found at open, in QEMU's
// words: `Failed to get "write" lock` when another user refuses to share a
// permission we need, `Failed to get shared "write" lock` when another user
// holds a permission we refuse to share.
type LockError struct {
	Path   string
	Perm   string // the permission's QEMU name
	Shared bool
}

func (e *LockError) Error() string {
	return e.Sentence() + ": is another process using the image [" + e.Path + "]?"
}

// Sentence is QEMU's error for the conflict without its hint:
// `Failed to get "write" lock`.
func (e *LockError) Sentence() string {
	s := "Failed to get "
	if e.Shared {
		s += "shared "
	}
	return s + "\"" + e.Perm + "\" lock"
}

// Question is the hint QEMU prints on a line of its own after Sentence.
func (e *LockError) Question() string {
	return "Is another process using the image [" + e.Path + "]?"
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *LockError) Is(target error) bool { return target == ErrLocked }

// lockPerms returns the permissions held and those refused to others.
func lockPerms(readOnly, shareRW bool) (held, unshared int) {
	held = permConsistentRead
	if !readOnly {
		held |= permWrite | permResize
	}
	if !shareRW {
		unshared = permWrite | permResize
	}
	return held, unshared
}

// errLockUnsupported marks a filesystem without OFD locks.
var errLockUnsupported = errors.New("raw: OFD locks are not supported here")

// applyLocks takes our lock bytes on fd and checks everyone else's.
func applyLocks(fd int, path string, held, unshared int) error {
	for i := 0; i < permCount; i++ {
		if held&(1<<i) != 0 {
			if err := lockByte(fd, lockPermBase+int64(i)); err != nil {
				return lockSetError(err, path, i, false)
			}
		}
		if unshared&(1<<i) != 0 {
			if err := lockByte(fd, lockSharedBase+int64(i)); err != nil {
				return lockSetError(err, path, i, true)
			}
		}
	}
	for i := 0; i < permCount; i++ {
		if held&(1<<i) != 0 {
			busy, err := lockTaken(fd, lockSharedBase+int64(i))
			if err != nil {
				return err
			}
			if busy {
				return &LockError{Path: path, Perm: permNames[i]}
			}
		}
		if unshared&(1<<i) != 0 {
			busy, err := lockTaken(fd, lockPermBase+int64(i))
			if err != nil {
				return err
			}
			if busy {
				return &LockError{Path: path, Perm: permNames[i], Shared: true}
			}
		}
	}
	return nil
}

// LockFile takes on f the locks a Driver opened with opts (ReadOnly,
// ShareRW, Locking) takes, and checks everyone else's, for a tool that
// reads an image file without a Driver (ringblk info and check read the
// metadata directly, as qemu-img's do through a locked open). A conflict is
// the *LockError an open would return; with LockingAuto a filesystem
// without OFD locks is not an error. The locks last as long as f's open
// file description.
func LockFile(f *os.File, path string, opts Options) error {
	if opts.Locking == LockingOff {
		return nil
	}
	held, unshared := lockPerms(opts.ReadOnly, opts.ShareRW)
	err := applyLocks(int(f.Fd()), path, held, unshared)
	if errors.Is(err, errLockUnsupported) && opts.Locking == LockingAuto {
		return nil
	}
	return err
}

func lockByte(fd int, b int64) error {
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: b, Len: 1}
	return retryEINTR(func() error { return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk) })
}

// lockTaken reports whether another open file description holds a lock on
// byte b (a probe for an exclusive lock).
func lockTaken(fd int, b int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: b, Len: 1}
	err := retryEINTR(func() error { return unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk) })
	if err != nil {
		if lockUnsupported(err) {
			return false, errLockUnsupported
		}
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}

func lockSetError(err error, path string, perm int, shared bool) error {
	switch {
	case err == syscall.EAGAIN || err == syscall.EACCES:
		// Someone holds an exclusive lock on the byte: not QEMU's protocol,
		// but certainly a conflict.
		return &LockError{Path: path, Perm: permNames[perm], Shared: !shared}
	case lockUnsupported(err):
		return errLockUnsupported
	}
	return err
}

func lockUnsupported(err error) bool {
	return err == syscall.EINVAL || err == syscall.ENOLCK || err == syscall.ENOTSUP || err == syscall.EOPNOTSUPP
}

func retryEINTR(f func() error) error {
	for {
		if err := f(); err != syscall.EINTR {
			return err
		}
	}
}

// unlockByte drops our lock on byte b.
func unlockByte(fd int, b int64) error {
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: b, Len: 1}
	return retryEINTR(func() error { return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk) })
}

// unlockAll drops every lock byte we may hold on fd.
func unlockAll(fd int) error {
	for i := 0; i < permCount; i++ {
		for _, base := range []int64{lockPermBase, lockSharedBase} {
			if err := unlockByte(fd, base+int64(i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// downgradeLocks drops, on fd, the lock bytes of permissions a read-write
// opener holds and a read-only one does not (write and resize): what
// stays is exactly lockPerms(true, shareRW).
func downgradeLocks(fd int) error {
	held, _ := lockPerms(false, false)
	ro, _ := lockPerms(true, false)
	for i := 0; i < permCount; i++ {
		if held&^ro&(1<<i) != 0 {
			if err := unlockByte(fd, lockPermBase+int64(i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// upgradeLocks takes back the bytes downgradeLocks dropped.
func upgradeLocks(fd int) error {
	held, _ := lockPerms(false, false)
	ro, _ := lockPerms(true, false)
	for i := 0; i < permCount; i++ {
		if held&^ro&(1<<i) != 0 {
			if err := lockByte(fd, lockPermBase+int64(i)); err != nil {
				return err
			}
		}
	}
	return nil
}
