package uringtest

import (
	"io"
	"math"
	"sync"
	"syscall"

	"github.com/ringblk/ringblk/uring"
)

// chunkSize is the allocation unit of a MemFile. Chunks that were never
// written (or were punched out) read as zeros and take no memory, so a test
// can write at the far end of a terabyte-sized sparse image.
const chunkSize = 4096

// MaxMemFileSize bounds the size of a MemFile. A write whose end lies beyond
// it fails with -EFBIG, as it would on a file system with that limit.
const MaxMemFileSize = int64(1) << 50

// MemFile is an in-memory, sparse file: the "disk" of a test. Attach it to a
// Ring with Ring.AttachFile (or create and attach one with Ring.AddMemFile)
// to get a fake fd for SQEs. A MemFile outlives the rings it is attached to,
// which is how a test "reopens" an image after Ring.Crash.
//
// A MemFile is safe for concurrent use: the ring applies completed
// operations under its lock, so a test may inspect it from another goroutine.
type MemFile struct {
	mu struct {
		sync.Mutex
		// chunks maps chunk index (offset / chunkSize) to its bytes. An absent
		// chunk reads as zeros.
		chunks map[int64]*[chunkSize]byte
		// size is the file size in bytes.
		// INVARIANT: every byte at or beyond size reads as zero, so growing
		// the file never exposes stale data.
		size  int64
		syncs int
	}
}

// NewMemFile returns a MemFile holding a copy of data.
func NewMemFile(data []byte) *MemFile {
	f := &MemFile{}
	f.mu.chunks = make(map[int64]*[chunkSize]byte)
	f.mu.size = int64(len(data))
	f.mu.Lock()
	f.writeLocked(data, 0)
	f.mu.Unlock()
	return f
}

// Size returns the file size in bytes.
func (f *MemFile) Size() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.size
}

// Syncs returns how many FSYNC operations completed successfully on the file.
func (f *MemFile) Syncs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.syncs
}

// AllocatedBytes returns the bytes held in allocated chunks (multiples of
// 4096). Punched and zeroed ranges that cover whole chunks release them;
// FALLOCATE in mode 0 only changes the size, it allocates nothing.
func (f *MemFile) AllocatedBytes() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.mu.chunks)) * chunkSize
}

// Bytes returns a copy of the whole file. It materialises sparse ranges, so
// keep it for small files.
func (f *MemFile) Bytes() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := make([]byte, f.mu.size)
	f.readLocked(b, 0)
	return b
}

// ReadAt implements io.ReaderAt.
func (f *MemFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.readLocked(p, off)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt implements io.WriterAt; it grows the file as needed.
func (f *MemFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off > MaxMemFileSize-int64(len(p)) {
		return 0, syscall.EFBIG
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writeLocked(p, off)
	return len(p), nil
}

// Truncate sets the file size, dropping data beyond it.
func (f *MemFile) Truncate(size int64) error {
	if size < 0 || size > MaxMemFileSize {
		return syscall.EINVAL
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if size < f.mu.size {
		f.zeroLocked(size, f.mu.size-size)
	}
	f.mu.size = size
	return nil
}

// readLocked copies file bytes at off into p, stopping at the end of file,
// and returns the count.
func (f *MemFile) readLocked(p []byte, off int64) int {
	if off >= f.mu.size {
		return 0
	}
	if rem := f.mu.size - off; int64(len(p)) > rem {
		p = p[:rem]
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		ci, co := pos/chunkSize, int(pos%chunkSize)
		span := min(chunkSize-co, len(p)-n)
		if c := f.mu.chunks[ci]; c != nil {
			copy(p[n:n+span], c[co:co+span])
		} else {
			clear(p[n : n+span])
		}
		n += span
	}
	return n
}

// writeLocked copies p into the file at off, growing it.
// REQUIRES: off >= 0 and off+len(p) <= MaxMemFileSize.
func (f *MemFile) writeLocked(p []byte, off int64) {
	if len(p) == 0 {
		return // an empty write never extends the file
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		ci, co := pos/chunkSize, int(pos%chunkSize)
		span := min(chunkSize-co, len(p)-n)
		c := f.mu.chunks[ci]
		if c == nil {
			c = new([chunkSize]byte)
			f.mu.chunks[ci] = c
		}
		copy(c[co:co+span], p[n:n+span])
		n += span
	}
	if end := off + int64(len(p)); end > f.mu.size {
		f.mu.size = end
	}
}

// zeroLocked zeroes [off, off+length) clipped to the current size, releasing
// whole chunks. It never changes the size.
func (f *MemFile) zeroLocked(off, length int64) {
	end := off + length
	if length < 0 || end < off || end > f.mu.size {
		end = f.mu.size
	}
	for pos := off; pos < end; {
		ci, co := pos/chunkSize, pos%chunkSize
		span := min(chunkSize-co, end-pos)
		if c := f.mu.chunks[ci]; c != nil {
			// A chunk is released when the zeroed span covers it whole, or
			// covers everything from co up to a new end of file.
			if span == chunkSize || (co == 0 && ci*chunkSize+chunkSize >= f.mu.size && end >= f.mu.size) {
				delete(f.mu.chunks, ci)
			} else {
				clear(c[co : co+span])
			}
		}
		pos += span
	}
}

// fallocate applies fallocate(2) semantics for the modes ringblk uses and
// returns the CQE result.
func (f *MemFile) fallocate(mode uint32, off, length uint64) int32 {
	if off > math.MaxInt64 || length == 0 || length > math.MaxInt64 || off+length > math.MaxInt64 {
		return -int32(syscall.EINVAL)
	}
	const known = uring.FALLOC_FL_KEEP_SIZE | uring.FALLOC_FL_PUNCH_HOLE | uring.FALLOC_FL_ZERO_RANGE
	if mode&^known != 0 {
		return -int32(syscall.EOPNOTSUPP)
	}
	punch := mode&uring.FALLOC_FL_PUNCH_HOLE != 0
	zero := mode&uring.FALLOC_FL_ZERO_RANGE != 0
	keep := mode&uring.FALLOC_FL_KEEP_SIZE != 0
	// vfs_fallocate: punching must keep the size, and punch and zero-range
	// are mutually exclusive.
	if punch && (!keep || zero) {
		return -int32(syscall.EOPNOTSUPP)
	}
	o, l := int64(off), int64(length)
	if o+l > MaxMemFileSize {
		return -int32(syscall.EFBIG)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if punch || zero {
		f.zeroLocked(o, l)
	}
	if !keep && o+l > f.mu.size {
		f.mu.size = o + l
	}
	return 0
}

func (f *MemFile) synced() {
	f.mu.Lock()
	f.mu.syncs++
	f.mu.Unlock()
}
