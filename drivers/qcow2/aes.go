package qcow2

// Legacy AES encryption of qcow2 images (crypt_method 1), as qemu-img and
// qemu-io 7.2 still read and write it for data liberation
// (docs/design/luks.md §Legacy AES). It is weak: the key is the password's
// first 16 bytes (zero padded), no key derivation, no check that the
// password is right (a wrong one reads garbage), and the IV is the plain
// guest sector number, the same in every image.
//
// Every 512-byte sector of a data cluster is AES-128-CBC encrypted with
// the plain64 IV of its GUEST sector number (LUKS uses the host offset,
// which is why LUKS goes through a payload filter node and AES cannot):
//
//   - the node's request alignment is raised to 512 at Open (QEMU's
//     request_alignment for encrypted images), so every guest request,
//     and so every data extent, is whole sectors;
//   - reads decrypt in the caller's buffers when their data extents are
//     in: oneDone (one extent), reqState.release (several), readGuest
//     (coroutine); unallocated (backing) and zero extents stay as read;
//   - in-place writes (writeFast, startWrite) of up to aesChunk bytes
//     encrypt into a bounce buffer the request holds until its child
//     writes complete (aesStage); the coroutine path's data writes go
//     through dataWrite, which encrypts into a bounce buffer aesChunk
//     bytes at a time; a partial cluster is written whole (COW with
//     zeroes or the old data), never as a file-level zero range.
//
// Compressed clusters QEMU wrote into an AES image are in clear (it
// neither encrypts nor decrypts them) and are read so; ringblk refuses
// compressed writes to any encrypted image (refuseCompressed). Extended L2 and external data files
// are refused with AES.

import (
	"bytes"
	"errors"
	"sync"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/crypto/luks"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

const (
	aesSector = 512
	// aesChunk is the bounce buffer of an encrypting write: longer data
	// writes go out in pieces of this size.
	aesChunk = 256 << 10
)

// aesSpec is the cipher: AES-128 in CBC mode, plain64 IVs.
var aesSpec = luks.Spec{Alg: "aes-128", Mode: luks.ModeCBC, IVGen: luks.IVPlain64, KeyBytes: 16}

// aesState is an AES image's cipher state. Fixed at Open.
type aesState struct {
	key []byte // nil: opened HeaderOnly without a key, data I/O fails
	// pool holds *aesWork: a Cipher keeps IV scratch, so each user takes
	// its own; Get and Put of a pointer allocate nothing once warm.
	pool sync.Pool
}

// aesWork is one user's cipher with its scratch.
type aesWork struct {
	c   *luks.Cipher
	buf []byte // aesChunk bytes, made on the first write
	iov [1][]byte
	sec [aesSector]byte // a sector that straddles iovec elements
}

// AESKey is legacy AES's key for a password: its bytes up to the first
// NUL (QEMU takes the secret as a C string), at most 16, zero padded.
func AESKey(password []byte) []byte {
	if i := bytes.IndexByte(password, 0); i >= 0 {
		password = password[:i]
	}
	k := make([]byte, 16)
	copy(k, password)
	return k
}

// openAES sets up an AES image's cipher: the key from the key secret, the
// node's alignment raised to whole sectors. Main Context, during Open.
func (d *Driver) openAES(n *block.Node) error {
	if d.mu.hdr.CryptMethod != format.CryptAES {
		return nil
	}
	switch {
	case d.mu.geo.ExtendedL2:
		return d.openErr(block.Unsupported, errors.New("legacy AES encryption (crypt_method 1) with extended L2 entries is not supported"))
	case d.mu.geo.ExternalData:
		return d.openErr(block.Unsupported, errors.New("legacy AES encryption (crypt_method 1) with an external data file is not supported"))
	}
	if err := n.RaiseAlign(aesSector); err != nil {
		return err
	}
	st := &aesState{}
	if pw := d.opts.KeySecret; pw != nil {
		st.key = AESKey(pw)
	} else if !d.opts.HeaderOnly {
		return d.openErr(block.Unsupported, ErrKeySecretRequired)
	}
	d.aes = st
	return nil
}

// get takes a cipher with scratch; put gives it back.
func (a *aesState) get() (*aesWork, error) {
	if a.key == nil {
		return nil, ErrKeySecretRequired // opened header only (info)
	}
	if w, _ := a.pool.Get().(*aesWork); w != nil {
		return w, nil
	}
	c, err := luks.NewCipher(aesSpec, a.key)
	if err != nil {
		return nil, err
	}
	return &aesWork{c: c}, nil
}

func (a *aesState) put(w *aesWork) {
	w.iov[0] = nil
	a.pool.Put(w)
}

func aesAligned(guest, n int64) error {
	if (guest|n)&(aesSector-1) != 0 {
		return format.OutOfRange("guest_offset", uint64(max(guest, 0)), "AES-encrypted data I/O is not sector aligned")
	}
	return nil
}

// crypt encrypts (enc) or decrypts n bytes of iov from skip in place,
// their first sector being guest sector guest/512. A sector split across
// iovec elements is gathered in w.sec. No allocation.
func (w *aesWork) crypt(iov [][]byte, skip, n, guest int64, enc bool) error {
	if err := aesAligned(guest, n); err != nil {
		return err
	}
	do := w.c.Decrypt
	if enc {
		do = w.c.Encrypt
	}
	sector := uint64(guest / aesSector)
	i, o := 0, skip
	for i < len(iov) && o >= int64(len(iov[i])) {
		o -= int64(len(iov[i]))
		i++
	}
	for pos, end := skip, skip+n; pos < end; {
		for i < len(iov) && o == int64(len(iov[i])) {
			i, o = i+1, 0
		}
		if i == len(iov) {
			return format.OutOfRange("guest_offset", uint64(guest), "AES-encrypted data I/O is longer than its buffers")
		}
		if avail := int64(len(iov[i])) - o; avail >= aesSector {
			m := min(avail, end-pos) &^ (aesSector - 1)
			do(iov[i][o:o+m], sector)
			sector += uint64(m / aesSector)
			pos, o = pos+m, o+m
			continue
		}
		block.CopyFromIov(w.sec[:], iov, pos)
		do(w.sec[:], sector)
		block.CopyToIov(iov, pos, w.sec[:])
		sector++
		pos += aesSector
		for adv := int64(aesSector); adv > 0 && i < len(iov); {
			if a := int64(len(iov[i])) - o; a > adv {
				o += adv
				adv = 0
			} else {
				adv -= a
				i, o = i+1, 0
			}
		}
	}
	return nil
}

// aesDecrypt decrypts n bytes of iov from skip, read from the data
// clusters of guest offset guest.
func (d *Driver) aesDecrypt(iov [][]byte, skip, n, guest int64) error {
	w, err := d.aes.get()
	if err != nil {
		return err
	}
	err = w.crypt(iov, skip, n, guest, false)
	d.aes.put(w)
	return err
}

// aesReadDone decrypts the data extents of a read that several child
// reads filled (reqState.release): ext covers r from r.Off.
func (d *Driver) aesReadDone(r *block.Request, ext []format.Extent) error {
	w, err := d.aes.get()
	if err != nil {
		return err
	}
	defer d.aes.put(w)
	for i := range ext {
		x := &ext[i]
		if x.Kind != format.ExtentData {
			continue
		}
		if err := w.crypt(r.Iov, x.GuestOff-r.Off, x.Len, x.GuestOff, false); err != nil {
			return err
		}
	}
	return nil
}

// dataWrite writes n bytes of iov at host offset host of the data child,
// the bytes of guest offset guest: as they are, or for an AES image
// encrypted into the bounce buffer, aesChunk bytes at a time. zero writes
// encrypted zeroes instead (iov unused).
func (d *Driver) dataWrite(co *aio.Co, r *block.Request, host, guest int64, iov [][]byte, n int64) error {
	if d.aes == nil {
		return d.childIO(co, r, d.data, block.OpWrite, host, iov, n)
	}
	return d.aesWrite(co, r, host, guest, iov, n, false)
}

func (d *Driver) aesWrite(co *aio.Co, r *block.Request, host, guest int64, iov [][]byte, n int64, zero bool) error {
	if err := aesAligned(guest, n); err != nil {
		return err
	}
	w, err := d.aes.get()
	if err != nil {
		return err
	}
	defer d.aes.put(w)
	if w.buf == nil {
		w.buf = make([]byte, aesChunk)
	}
	for done := int64(0); done < n; {
		k := min(n-done, aesChunk)
		b := w.buf[:k]
		if zero {
			clear(b)
		} else {
			block.CopyFromIov(b, iov, done)
		}
		w.c.Encrypt(b, uint64((guest+done)/aesSector))
		w.iov[0] = b
		if err := d.childIO(co, r, d.data, block.OpWrite, host+done, w.iov[:], k); err != nil {
			return err
		}
		done += k
	}
	return nil
}

// errAESZeroExpand refuses the expansion of zero clusters (amend to
// compat=0.10) of an AES image whose guest offsets the expansion does not
// know (snapshot tables).
var errAESZeroExpand = errors.New("expanding zero clusters of a legacy AES-encrypted image is not supported; convert it instead")

// SetupAES makes a freshly created, empty image legacy AES-encrypted, as
// qemu-img create -o encryption=on (encrypt.format=aes) does: only the
// header's crypt_method changes (the key is the password itself, nothing
// is stored). The node must be open read-write and have no data yet.
func SetupAES(n *block.Node) error {
	d, ok := n.Driver().(*Driver)
	if !ok {
		return &block.Error{Kind: block.Unsupported, Op: block.OpOpen, Node: n.Name(), Err: errors.New("qcow2: encryption setup needs a qcow2 node")}
	}
	if d.mu.hdr.CryptMethod != format.CryptNone {
		return &block.Error{Kind: block.Unsupported, Op: block.OpWrite, Node: n.Name(), Err: errors.New("qcow2: the image is already encrypted")}
	}
	return d.formatErr(block.OpWrite, 0, d.runLocked(n, func(co *aio.Co) error {
		d.mu.Lock()
		nh := *d.mu.hdr
		d.mu.Unlock()
		nh.CryptMethod = format.CryptAES
		if err := maintOf(d).rewriteHeader(co, &nh); err != nil {
			return err
		}
		d.aes = &aesState{} // no key: reopen to write data
		return nil
	}))
}

// aesFastOK reports whether r may take the in-place write paths
// (writeFast, startWrite): always without AES; with it, when the key is
// there and r fits one bounce buffer (aesStage).
func (d *Driver) aesFastOK(r *block.Request) bool {
	return d.aes == nil || (d.aes.key != nil && r.Len <= aesChunk)
}

// aesStage encrypts an in-place write into a bounce buffer taken for it
// (s.aes, given back by reqState.release): r's bytes, each host run of
// s.ext at its guest sectors. No allocation once the pool is warm.
func (d *Driver) aesStage(s *reqState, r *block.Request) error {
	w, err := d.aes.get()
	if err != nil {
		return err
	}
	s.aes = w
	if r.Len > aesChunk {
		return format.OutOfRange("guest_offset", uint64(max(r.Off, 0)), "AES in-place write longer than its bounce buffer")
	}
	if err := aesAligned(r.Off, r.Len); err != nil {
		return err
	}
	if w.buf == nil {
		w.buf = make([]byte, aesChunk)
	}
	b := w.buf[:r.Len]
	block.CopyFromIov(b, r.Iov, 0)
	for i := range s.ext {
		x := &s.ext[i]
		at := x.GuestOff - r.Off
		w.c.Encrypt(b[at:at+x.Len], uint64(x.GuestOff/aesSector))
	}
	w.iov[0] = b
	return nil
}
