package qcow2

// LUKS encryption of qcow2 images (crypt_method 2), as QEMU 7.2 does it:
// the LUKS header and its key slots sit in clusters the full disk
// encryption header extension points at (their offsets relative to that
// area), and every data cluster is encrypted per 512-byte sector with the
// sector's host offset as IV. The driver reads and writes data clusters
// through d.data: for an encrypted image a drivers/luks payload filter
// node over the file node, so the read, write and COW paths stay the
// same. Metadata goes to d.file in clear, as in QEMU.

import (
	"errors"
	"fmt"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/crypto/luks"
	luksdrv "github.com/ringblk/ringblk/drivers/luks"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// ErrKeySecretRequired is QEMU's wording for an encrypted image opened
// for I/O without encrypt.key-secret.
var ErrKeySecretRequired = errors.New("Parameter 'encrypt.key-secret' is required for cipher")

type cryptoState struct {
	hdr *luks.Header // nil: not encrypted
	// locked: opened HeaderOnly, data I/O fails.
	locked bool
}

func (d *Driver) encrypted() bool { return d.crypto.hdr != nil || d.aes != nil }

// CryptoHeader is the image's LUKS header; nil when not encrypted.
func (d *Driver) CryptoHeader() *luks.Header { return d.crypto.hdr }

// openCrypto reads the LUKS header of an encrypted image, unlocks it with
// the key secret and puts the payload filter between the driver's data
// path and the file. Main Context, during Open.
func (d *Driver) openCrypto(n, file *block.Node) error {
	h := d.mu.hdr
	if h.CryptMethod != format.CryptLUKS {
		return nil
	}
	area := int64(h.CryptoOffset)
	if size, err := file.Length(); err != nil {
		return err
	} else if area > size || int64(h.CryptoLength) > size-area {
		return d.openErr(block.InvalidFormat, fmt.Errorf("the encryption header area (%d bytes at %d) is outside the image file", h.CryptoLength, area))
	}
	hb := make([]byte, luks.HeaderLen)
	if _, err := file.ReadAt(hb, area); err != nil {
		return d.openErr(block.Io, fmt.Errorf("Could not read encryption header: %w", err))
	}
	lh, err := luks.Parse(hb)
	if err != nil {
		return d.openErr(block.InvalidFormat, err)
	}
	// Key material must lie inside the area the extension claims.
	for i, s := range lh.Slots {
		if end := (uint64(s.KeyOffset) + lh.MaterialSectors()) * luks.SectorSize; end > h.CryptoLength {
			return d.openErr(block.InvalidFormat, fmt.Errorf("Keyslot %d is outside the encryption header area (%d > %d bytes)", i, end, h.CryptoLength))
		}
	}
	d.crypto.hdr = lh
	pw := d.opts.KeySecret
	if pw == nil {
		if d.opts.HeaderOnly {
			// Data I/O fails through a filter without a key.
			d.crypto.locked = true
			return d.attachPayload(n, file, nil)
		}
		return d.openErr(block.Unsupported, ErrKeySecretRequired)
	}
	vol, err := luks.Unlock(lh, pw, func(p []byte, off int64) error {
		if off < 0 || off+int64(len(p)) > int64(h.CryptoLength) {
			return fmt.Errorf("key material at %d is outside the encryption header area", off)
		}
		_, err := file.ReadAt(p, area+off)
		return err
	})
	if err != nil {
		return d.openErr(block.Unsupported, err)
	}
	c, err := vol.NewCipher()
	clear(vol.Key)
	if err != nil {
		return d.openErr(block.Unsupported, err)
	}
	return d.attachPayload(n, file, c)
}

// attachPayload makes a payload filter with cipher c (nil: data I/O
// fails) over file the driver's data child.
func (d *Driver) attachPayload(n, file *block.Node, c *luks.Cipher) error {
	g := n.Graph()
	file.Ref()
	fn, err := g.Open(luksdrv.NewPayload(file, c), luksdrv.NodeOptions(block.Options{
		Name: n.Name() + "-crypt", ReadOnly: n.ReadOnly(), Context: n.Context()}))
	if err != nil {
		return err
	}
	ch, err := g.Attach(n, fn, block.ChildSpec{Name: "crypt", Role: block.RolePrimary})
	fn.Unref()
	if err != nil {
		return err
	}
	d.data = ch
	return nil
}

// SetupEncryption makes a freshly created, empty image LUKS-encrypted, as
// qemu-img create -o encrypt.format=luks does: a LUKS volume is made with
// o, its header and key slot 0 written into newly allocated clusters (at
// the first free cluster, after the L1 table, as QEMU places them), and
// the header rewritten with crypt_method 2 and the full disk encryption
// extension. The node must be open read-write and have no data yet.
func SetupEncryption(n *block.Node, o luks.CreateOptions) error {
	d, ok := n.Driver().(*Driver)
	if !ok {
		return &block.Error{Kind: block.Unsupported, Op: block.OpOpen, Node: n.Name(), Err: errors.New("qcow2: encryption setup needs a qcow2 node")}
	}
	if d.mu.hdr.CryptMethod != format.CryptNone {
		return &block.Error{Kind: block.Unsupported, Op: block.OpWrite, Node: n.Name(), Err: errors.New("qcow2: the image is already encrypted")}
	}
	lh, mat, _, err := luks.Create(o)
	if err != nil {
		return err
	}
	length := lh.PayloadBytes()
	area := make([]byte, length)
	copy(area, lh.Marshal())
	copy(area[int64(lh.Slots[0].KeyOffset)*luks.SectorSize:], mat)
	return d.installCryptoArea(n, area)
}

// InstallEncryption gives a freshly created, empty image an existing
// encryption area (a LUKS header and key material, as read from another
// image's area): what a commit that re-creates its top image keeps.
func InstallEncryption(n *block.Node, area []byte) error {
	d, ok := n.Driver().(*Driver)
	if !ok {
		return &block.Error{Kind: block.Unsupported, Op: block.OpOpen, Node: n.Name(), Err: errors.New("qcow2: encryption setup needs a qcow2 node")}
	}
	if d.mu.hdr.CryptMethod != format.CryptNone {
		return &block.Error{Kind: block.Unsupported, Op: block.OpWrite, Node: n.Name(), Err: errors.New("qcow2: the image is already encrypted")}
	}
	return d.installCryptoArea(n, area)
}

// installCryptoArea writes area into newly allocated contiguous clusters
// and points the header at it (crypt_method 2, the extension), then
// locks the driver's data path until a reopen with the key.
func (d *Driver) installCryptoArea(n *block.Node, area []byte) error {
	lh, err := luks.Parse(area)
	if err != nil {
		return err
	}
	length := int64(len(area))
	err = d.formatErr(block.OpWrite, 0, d.runLocked(n, func(co *aio.Co) error {
		cs := d.mu.geo.ClusterSize()
		buf := make([]byte, (length+cs-1)/cs*cs)
		copy(buf, area)
		if err := reserveRefblocks(metaOf(d), co, int64(len(buf))/cs); err != nil {
			return err
		}
		off, err := metaOf(d).allocContiguous(co, int64(len(buf))/cs)
		if err != nil {
			return err
		}
		if err := d.fileWrite(co, nil, buf, off); err != nil {
			return err
		}
		if err := metaOf(d).flushAllMetadata(co, nil); err != nil {
			return err
		}
		if err := d.fileSync(co, nil); err != nil {
			return err
		}
		d.mu.Lock()
		nh := *d.mu.hdr
		d.mu.Unlock()
		nh.CryptMethod, nh.CryptoOffset, nh.CryptoLength = format.CryptLUKS, uint64(off), uint64(length)
		if err := maintOf(d).rewriteHeader(co, &nh); err != nil {
			return err
		}
		d.crypto.hdr, d.crypto.locked = lh, true // reopen to write data
		return nil
	}))
	if err != nil {
		return err
	}
	file := d.file.Node()
	var aerr error
	n.Graph().Control(func() { aerr = d.attachPayload(n, file, nil) })
	return aerr
}

// reserveRefblocks makes sure a run of n clusters can be allocated
// contiguously at the end of the image: allocCluster puts a missing
// refcount block in the first cluster it covers, so a run longer than one
// block's reach (128 KiB with 512-byte clusters) would never be
// contiguous. The missing blocks for [end, end+b+n) are created first, at
// end..end+b-1, each counted in its covering block (R3 as allocCluster:
// the blocks are dirty before the table entries, written by the next
// metadata flush). REQUIRES: metaLock held.
func reserveRefblocks(d metaIO, co *aio.Co, n int64) error {
	cs := d.mu.geo.ClusterSize()
	per := d.mu.geo.RefcountBlockEntries()
	for try := 0; try < 64; try++ {
		d.mu.Lock()
		start := (d.mu.geo.FileSize + cs - 1) / cs
		rt := d.mu.rt
		d.mu.Unlock()
		has := func(ti int64) bool { return ti < int64(len(rt)) && rt[ti] != 0 }
		b := int64(0)
		for i := 0; ; i++ {
			if i > 64 {
				return format.Limit("full_disk_encryption_ext.length", uint64(n*cs), "refcount blocks for the encryption area do not converge")
			}
			nb := int64(0)
			for ti := start / per; ti <= (start+b+n-1)/per; ti++ {
				if !has(ti) {
					nb++
				}
			}
			if nb == b {
				break
			}
			b = nb
		}
		if b == 0 {
			return nil
		}
		if (start+b+n-1)/per >= int64(len(rt)) {
			if err := d.growRefcountTable(co); err != nil {
				return err
			}
			continue
		}
		d.mu.Lock()
		next := start
		for ti := start / per; ti <= (start+b+n-1)/per; ti++ {
			if !has(ti) {
				off := next * cs
				d.mu.rb[off] = &refBlock{buf: make([]byte, cs), dirty: true}
				d.mu.rt[ti] = uint64(off)
				d.meta.add(off)
				d.mu.dirtyRT[ti] = true
				next++
			}
		}
		d.growFile(next * cs)
		d.mu.Unlock()
		// Each new block's own cluster has refcount 1.
		for c := start; c < start+b; c++ {
			rb, _, bi, err := d.refcountBlock(co, c)
			if err != nil {
				return err
			}
			if rb == nil {
				return format.Corrupt("refcount_table", uint64(c*cs), "refcount block missing after its creation")
			}
			d.mu.Lock()
			err = format.RefcountSet(rb.buf, d.mu.geo.RefcountOrder, bi, 1)
			rb.dirty = true
			d.mu.Unlock()
			if err != nil {
				return err
			}
		}
		return nil
	}
	return format.Limit("full_disk_encryption_ext.length", uint64(n*cs), "refcount table growth for the encryption area does not converge")
}

// refuseCompressed fails compressed writes to an encrypted image, as
// QEMU does.
func (d *Driver) refuseCompressed(r *block.Request) bool {
	if !d.encrypted() {
		return false
	}
	r.Complete(&block.Error{Kind: block.Unsupported, Op: r.Op, Node: d.nodeName(), Offset: r.Off, Err: errors.New("Compression is not supported for encrypted images")})
	return true
}
