package raw

import (
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Cache selects how the file is opened (QEMU's cache= modes for a file).
type Cache uint8

const (
	// CacheWriteback is buffered I/O through the page cache; durability
	// needs a flush. The default.
	CacheWriteback Cache = iota
	// CacheNone is O_DIRECT: I/O bypasses the page cache, so requests and
	// buffers must meet the file's DIO alignment (the node's Align and
	// bounce buffers take care of that). Durability still needs a flush.
	CacheNone
	// CacheWritethrough is buffered I/O with O_DSYNC: every write is
	// durable when it completes.
	CacheWritethrough
)

var cacheNames = [...]string{CacheWriteback: "writeback", CacheNone: "none", CacheWritethrough: "writethrough"}

func (c Cache) String() string { return enumName(cacheNames[:], int(c)) }

// ParseCache parses "writeback", "none" or "writethrough".
func ParseCache(s string) (Cache, bool) {
	i, ok := parseEnum(cacheNames[:], s)
	return Cache(i), ok
}

// Discard selects what a discard request does (QEMU's discard=).
type Discard uint8

const (
	// DiscardIgnore completes discards without touching the file. The
	// default, as in QEMU.
	DiscardIgnore Discard = iota
	// DiscardUnmap punches a hole (regular files) or issues BLKDISCARD
	// (block devices); it also lets write-zeroes deallocate.
	DiscardUnmap
)

var discardNames = [...]string{DiscardIgnore: "ignore", DiscardUnmap: "unmap"}

func (d Discard) String() string { return enumName(discardNames[:], int(d)) }

// ParseDiscard parses "ignore" or "unmap".
func ParseDiscard(s string) (Discard, bool) {
	i, ok := parseEnum(discardNames[:], s)
	return Discard(i), ok
}

// DetectZeroes selects whether writes of zero buffers become write-zeroes
// (QEMU's detect-zeroes=).
type DetectZeroes uint8

const (
	DetectZeroesOff DetectZeroes = iota
	// DetectZeroesOn turns an all-zero write into a write-zeroes.
	DetectZeroesOn
	// DetectZeroesUnmap also allows it to deallocate (when Discard is
	// DiscardUnmap).
	DetectZeroesUnmap
)

var detectNames = [...]string{DetectZeroesOff: "off", DetectZeroesOn: "on", DetectZeroesUnmap: "unmap"}

func (d DetectZeroes) String() string { return enumName(detectNames[:], int(d)) }

// ParseDetectZeroes parses "off", "on" or "unmap".
func ParseDetectZeroes(s string) (DetectZeroes, bool) {
	i, ok := parseEnum(detectNames[:], s)
	return DetectZeroes(i), ok
}

// Prealloc selects how new space is backed when a file is created or grown
// (QEMU's preallocation=).
type Prealloc uint8

const (
	// PreallocOff extends the file sparsely (ftruncate).
	PreallocOff Prealloc = iota
	// PreallocFalloc reserves the blocks with fallocate.
	PreallocFalloc
	// PreallocFull writes zeroes over the new range.
	PreallocFull
)

var preallocNames = [...]string{PreallocOff: "off", PreallocFalloc: "falloc", PreallocFull: "full"}

func (p Prealloc) String() string { return enumName(preallocNames[:], int(p)) }

// ParsePrealloc parses "off", "falloc" or "full".
func ParsePrealloc(s string) (Prealloc, bool) {
	i, ok := parseEnum(preallocNames[:], s)
	return Prealloc(i), ok
}

// Locking selects image locking (QEMU's locking=).
type Locking uint8

const (
	// LockingAuto takes QEMU-compatible OFD locks, and opens without them
	// when the filesystem does not support OFD locks. The default.
	LockingAuto Locking = iota
	// LockingOn takes the locks and fails the open when it cannot.
	LockingOn
	// LockingOff takes no lock and checks none.
	LockingOff
)

var lockingNames = [...]string{LockingAuto: "auto", LockingOn: "on", LockingOff: "off"}

func (l Locking) String() string { return enumName(lockingNames[:], int(l)) }

// ParseLocking parses "auto", "on" or "off".
func ParseLocking(s string) (Locking, bool) {
	i, ok := parseEnum(lockingNames[:], s)
	return Locking(i), ok
}

// Fadvise is an access-pattern hint given to the kernel for the driver's
// open file (posix_fadvise), fio's fadvise_hint. Linux keeps RANDOM and
// SEQUENTIAL per open file: RANDOM turns readahead off for it,
// SEQUENTIAL doubles the readahead window. Another open of the same file
// keeps its own.
type Fadvise uint8

const (
	// FadviseNone gives no hint (the kernel's default readahead), as QEMU
	// does. The default.
	FadviseNone Fadvise = iota
	// FadviseNormal is POSIX_FADV_NORMAL.
	FadviseNormal
	// FadviseSequential is POSIX_FADV_SEQUENTIAL.
	FadviseSequential
	// FadviseRandom is POSIX_FADV_RANDOM: no readahead.
	FadviseRandom
)

var fadviseNames = [...]string{FadviseNone: "none", FadviseNormal: "normal", FadviseSequential: "sequential", FadviseRandom: "random"}

func (f Fadvise) String() string { return enumName(fadviseNames[:], int(f)) }

// ParseFadvise parses "none", "normal", "sequential" or "random".
func ParseFadvise(s string) (Fadvise, bool) {
	i, ok := parseEnum(fadviseNames[:], s)
	return Fadvise(i), ok
}

// Options configure a raw driver. The zero value opens read-write, cached
// (writeback), discards ignored, no zero detection, QEMU-compatible locks.
type Options struct {
	ReadOnly     bool
	Cache        Cache
	Discard      Discard
	DetectZeroes DetectZeroes
	// Prealloc applies to growth through Truncate.
	Prealloc Prealloc
	Locking  Locking
	// ShareRW lets other processes write (and resize) the image while it is
	// open (QEMU's share-rw=on); without it the driver refuses writers, as
	// a QEMU guest device does.
	ShareRW bool
	// Fadvise is the access-pattern hint for this open of the file
	// (regular files and block devices), applied at Open.
	Fadvise Fadvise
	// NoAtime opens the file with O_NOATIME, as fio opens its files: reads
	// then skip the kernel's access-time check (touch_atime, tens of ns
	// per request on a fast device) and leave the file's atime alone.
	// Where the kernel refuses it (EPERM: the caller neither owns the file
	// nor has CAP_FOWNER) the file is opened without it, as fio does.
	// Benchmarks set it; QEMU does not, so images opened for VMs do not.
	NoAtime bool
	// Probed marks an image whose format was guessed by probing: writes
	// must not make its first sector probe as another format, and the
	// node is aligned to ProbeSize for that (probeguard.go).
	Probed bool
}

// openFile opens path with flags, plus O_NOATIME when noAtime asks for it
// and the kernel allows it.
func openFile(path string, flags int, noAtime bool) (*os.File, error) {
	if noAtime {
		f, err := os.OpenFile(path, flags|unix.O_NOATIME, 0)
		if !errors.Is(err, unix.EPERM) {
			return f, err
		}
	}
	return os.OpenFile(path, flags, 0)
}

func enumName(names []string, i int) string {
	if i < len(names) && names[i] != "" {
		return names[i]
	}
	return "unknown(" + strconv.Itoa(i) + ")"
}

func parseEnum(names []string, s string) (int, bool) {
	for i, n := range names {
		if n == s {
			return i, true
		}
	}
	return 0, false
}
