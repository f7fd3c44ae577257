// Package luks is the "luks" format driver: a raw LUKS1 volume (QEMU's
// -f luks) over a file node. The header and key slots are crypto/luks's;
// this package unlocks the volume on open and encrypts or decrypts the
// payload per 512-byte sector on the request path, the sector number of a
// guest offset being its IV (plain64), as QEMU's block/crypto does.
//
// The node must be opened with Align SectorSize and MaxTransfer
// MaxTransfer (NodeOptions): reads decrypt in place in the caller's
// buffers; writes encrypt into bounce buffers the driver keeps (one per
// write in flight, reused, never freed while open), so a request
// allocates nothing once the pool has grown to the queue depth.
package luks

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/ringblk/ringblk/block"
	cl "github.com/ringblk/ringblk/crypto/luks"
)

const (
	// SectorSize is the request alignment the node needs.
	SectorSize = cl.SectorSize
	// MaxTransfer is the longest request handed to the driver and the
	// size of a bounce buffer (QEMU's block/crypto uses 1 MiB too).
	MaxTransfer = 1 << 20
)

// ErrKeySecretRequired is QEMU's wording for an open with I/O and no
// password.
var ErrKeySecretRequired = errors.New("Parameter 'key-secret' is required for cipher")

// Options say how to open a LUKS volume.
type Options struct {
	// Password is the key secret's bytes.
	Password []byte
	// NoIO opens the header only (qemu-img info): no password needed,
	// reads and writes fail.
	NoIO bool
}

// NodeOptions fills in the alignment and transfer limit the driver needs.
func NodeOptions(o block.Options) block.Options {
	o.Align, o.MaxTransfer = SectorSize, MaxTransfer
	return o
}

// Driver is one open LUKS volume.
type Driver struct {
	block.DriverBase
	opts    Options
	pending *block.Node
	file    *block.Child
	node    *block.Node
	hdr     *cl.Header
	vol     *cl.Volume
	c       *cl.Cipher
	payload int64
	bare    bool // NewPayload: no header, payload at 0, cipher given

	free    []*bounce // write bounce buffers not in use
	rd      readDone
	wd      writeDone
	fwd     fwdDone
	scratch [SectorSize]byte // a sector that straddles iovec elements
}

type bounce struct{ buf []byte }

// New returns a driver over file (the caller's reference passes to the
// driver); open it with graph.Open(d, NodeOptions(opts)).
func New(file *block.Node, o Options) *Driver {
	d := &Driver{opts: o, pending: file}
	d.rd.d, d.wd.d = d, d
	return d
}

// NewPayload returns a driver that encrypts the whole of file with c,
// the sector number of a file offset being its IV: qcow2's encrypted data
// clusters, whose IV is their host offset. It has no header; the caller's
// reference on file passes to the driver.
func NewPayload(file *block.Node, c *cl.Cipher) *Driver {
	d := New(file, Options{})
	d.c, d.bare = c, true
	return d
}

// Header is the volume's LUKS header.
func (d *Driver) Header() *cl.Header { return d.hdr }

// Open attaches the file, parses the header and unlocks a key slot.
func (d *Driver) Open(n *block.Node) error {
	d.node = n
	file := d.pending
	d.pending = nil
	if file == nil {
		return errors.New("luks: no file node")
	}
	c, err := n.Graph().Attach(n, file, block.ChildSpec{Name: "file", Role: block.RoleFile | block.RolePrimary})
	file.Unref()
	if err != nil {
		return err
	}
	d.file = c
	if d.bare {
		return nil
	}
	hb := make([]byte, cl.HeaderLen)
	if _, err := file.ReadAt(hb, 0); err != nil {
		return fmt.Errorf("Unable to read LUKS header: %w", err)
	}
	if d.hdr, err = cl.Parse(hb); err != nil {
		return err
	}
	d.payload = d.hdr.PayloadBytes()
	if d.opts.NoIO {
		return nil
	}
	if d.opts.Password == nil {
		return ErrKeySecretRequired
	}
	d.vol, err = cl.Unlock(d.hdr, d.opts.Password, func(p []byte, off int64) error {
		_, err := file.ReadAt(p, off)
		return err
	})
	if err != nil {
		return err
	}
	d.c, err = d.vol.NewCipher()
	return err
}

// Close forgets the key.
func (d *Driver) Close(*block.Node) error {
	if d.bare {
		return nil
	}
	if d.vol != nil {
		clear(d.vol.Key)
	}
	d.vol, d.c = nil, nil
	return nil
}

// Length is the file's length less the payload offset.
func (d *Driver) Length(n *block.Node) (int64, error) {
	l, err := d.file.Node().Length()
	if err != nil {
		return 0, err
	}
	if l < d.payload {
		return 0, &block.Error{Kind: block.Io, Op: block.OpLength, Node: n.Name(), Err: fmt.Errorf("the file (%d bytes) ends before the LUKS payload offset %d", l, d.payload)}
	}
	return l - d.payload, nil
}

func (d *Driver) noIO(r *block.Request) bool {
	if d.c != nil {
		return false
	}
	r.CompleteLater(&block.Error{Kind: block.Unsupported, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: ErrKeySecretRequired})
	return true
}

func aligned(r *block.Request) bool { return r.Off%SectorSize == 0 && r.Len%SectorSize == 0 }

func (d *Driver) misaligned(r *block.Request) {
	r.CompleteLater(&block.Error{Kind: block.OutOfBounds, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: syscall.EINVAL})
}

// Read reads the ciphertext into the caller's buffers and decrypts it
// there when it arrives.
func (d *Driver) Read(r *block.Request) {
	if d.noIO(r) {
		return
	}
	if !aligned(r) {
		d.misaligned(r)
		return
	}
	s := r.Sub()
	s.Op, s.Off, s.Len, s.Iov = block.OpRead, d.payload+r.Off, r.Len, r.Iov
	d.file.Submit(s, &d.rd)
}

type readDone struct{ d *Driver }

func (rd *readDone) RequestDone(s *block.Request, err error) {
	r := s.Parent
	if err == nil {
		rd.d.decryptIov(r.Iov, r.Len, uint64(r.Off/SectorSize))
	}
	r.Complete(err)
}

// decryptIov decrypts the first n bytes of iov in place, sector by
// sector from sector; a sector split across elements is gathered in
// d.scratch, decrypted and scattered back.
func (d *Driver) decryptIov(iov [][]byte, n int64, sector uint64) {
	var pos, secStart int64 // request bytes before b; where a gathered sector starts
	part := 0
	for _, b := range iov {
		if pos >= n {
			break
		}
		b = b[:min(int64(len(b)), n-pos)]
		for i := 0; i < len(b); {
			at := sector + uint64((pos+int64(i))/SectorSize)
			if part == 0 && len(b)-i >= SectorSize {
				whole := (len(b) - i) &^ (SectorSize - 1)
				d.c.Decrypt(b[i:i+whole], at)
				i += whole
				continue
			}
			if part == 0 {
				secStart = pos + int64(i)
			}
			k := copy(d.scratch[part:], b[i:])
			part += k
			i += k
			if part == SectorSize {
				d.c.Decrypt(d.scratch[:], sector+uint64(secStart/SectorSize))
				scatter(iov, d.scratch[:], secStart)
				part = 0
			}
		}
		pos += int64(len(b))
	}
}

// scatter copies src over the request bytes of iov from start on.
func scatter(iov [][]byte, src []byte, start int64) {
	var pos int64
	for _, b := range iov {
		if len(src) == 0 {
			return
		}
		if end := pos + int64(len(b)); end > start {
			k := copy(b[start-pos:], src)
			src = src[k:]
			start += int64(k)
		}
		pos += int64(len(b))
	}
}

// Write encrypts into a bounce buffer and writes that.
func (d *Driver) Write(r *block.Request) {
	if d.noIO(r) {
		return
	}
	if !aligned(r) {
		d.misaligned(r)
		return
	}
	b := d.getBounce(r.Len)
	buf := b.buf[:r.Len]
	pos := 0
	for _, v := range r.Iov {
		pos += copy(buf[pos:], v)
	}
	d.c.Encrypt(buf, uint64(r.Off/SectorSize))
	s := r.Sub()
	s.Op, s.Flags, s.Off = block.OpWrite, r.Flags, d.payload+r.Off
	s.SetBuf(buf)
	s.Aux = b
	d.file.Submit(s, &d.wd)
}

type writeDone struct{ d *Driver }

func (wd *writeDone) RequestDone(s *block.Request, err error) {
	b := s.Aux.(*bounce)
	s.Aux = nil
	wd.d.free = append(wd.d.free, b)
	s.Parent.Complete(err)
}

func (d *Driver) getBounce(n int64) *bounce {
	for i := len(d.free) - 1; i >= 0; i-- {
		if b := d.free[i]; int64(cap(b.buf)) >= n {
			d.free[i] = d.free[len(d.free)-1]
			d.free = d.free[:len(d.free)-1]
			return b
		}
	}
	return &bounce{buf: make([]byte, max(n, MaxTransfer))}
}

// Flush, Discard forward to the file (discard shifted by the payload
// offset, as QEMU's block/crypto does).
func (d *Driver) Flush(r *block.Request) { d.forward(r, 0) }

func (d *Driver) Discard(r *block.Request) { d.forward(r, d.payload) }

func (d *Driver) forward(r *block.Request, shift int64) {
	s := r.Sub()
	s.Op, s.Flags, s.Off, s.Len = r.Op, r.Flags, r.Off+shift, r.Len
	d.file.Submit(s, &d.fwd)
}

type fwdDone struct{}

func (fwdDone) RequestDone(s *block.Request, err error) { s.Parent.Complete(err) }

// Truncate resizes the payload: the file becomes payload offset + size.
func (d *Driver) Truncate(r *block.Request) {
	if r.Off%SectorSize != 0 {
		r.CompleteLater(&block.Error{Kind: block.OutOfBounds, Op: r.Op, Node: r.Node().Name(), Offset: r.Off, Err: fmt.Errorf("luks: size %d is not a multiple of %d", r.Off, SectorSize)})
		return
	}
	s := r.Sub()
	s.Op, s.Flags, s.Off = block.OpTruncate, r.Flags, d.payload+r.Off
	d.file.Submit(s, &d.fwd)
}

// WriteZeroes writes encrypted zeros (a zero range of the payload is not
// zero ciphertext), MaxTransfer bytes at a time.
func (d *Driver) WriteZeroes(r *block.Request) {
	if d.noIO(r) {
		return
	}
	if !aligned(r) {
		d.misaligned(r)
		return
	}
	z := &zeroer{d: d, r: r, off: r.Off, end: r.Off + r.Len, b: d.getBounce(MaxTransfer)}
	z.next()
}

type zeroer struct {
	d        *Driver
	r        *block.Request
	off, end int64
	b        *bounce
}

func (z *zeroer) next() {
	n := min(z.end-z.off, int64(len(z.b.buf)))
	buf := z.b.buf[:n]
	clear(buf)
	z.d.c.Encrypt(buf, uint64(z.off/SectorSize))
	s := z.r.Sub()
	s.Op, s.Flags, s.Off = block.OpWrite, z.r.Flags&block.FUA, z.d.payload+z.off
	s.SetBuf(buf)
	z.off += n
	z.d.file.Submit(s, z)
}

func (z *zeroer) RequestDone(s *block.Request, err error) {
	if err != nil || z.off >= z.end {
		z.d.free = append(z.d.free, z.b)
		z.r.Complete(err)
		return
	}
	z.next()
}

// Reopen changes nothing of the driver (block.Reopener): it keeps no state
// that depends on the read-only flag, and block reopens the file below.
func (d *Driver) Reopen(*block.Node, bool) error { return nil }

var _ block.Reopener = (*Driver)(nil)
