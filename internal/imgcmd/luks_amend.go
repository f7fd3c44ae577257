package imgcmd

// qemu-img amend for LUKS key slots, on a raw LUKS volume (-f luks) or an
// encrypted qcow2 image (the same keys with "encrypt."): state=active adds
// a password (new-secret=, keyslot= or the first free slot, iter-time=),
// state=inactive erases slots (keyslot= or every slot old-secret= opens).
// The master key is unlocked with the image's key-secret; the header and
// key material are rewritten in place, at file level, with QEMU's checks
// and wording.

import (
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	cl "github.com/ringblk/ringblk/crypto/luks"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/cli"
)

var luksAmendKeys = []string{"state", "new-secret", "old-secret", "keyslot", "iter-time"}

// isLuksAmend tells whether an amend option list is about LUKS key slots.
func isLuksAmend(olist []string) bool {
	pairs, _, err := format.SplitOptionList(olist)
	if err != nil {
		return false
	}
	for _, p := range pairs {
		k := strings.TrimPrefix(p.Key, "encrypt.")
		for _, l := range luksAmendKeys {
			if k == l {
				return true
			}
		}
	}
	return false
}

// amendLuks runs a key slot amend on the image name (a path, or an
// --image-opts list).
func amendLuks(name, fmtName string, olist []string, ia *cli.ImageArgs, force bool) error {
	path := name
	var pw []byte
	if ia.ImageOpts {
		sp, err := cli.ParseImageSpec(name)
		if err != nil {
			return fmt.Errorf("Could not open '%s': %v", name, err)
		}
		path, fmtName = sp.Path, sp.Format
		if len(sp.SecretIDs) > 0 && sp.SecretIDs[0] != "" {
			if pw, err = ia.Objects.Secret(sp.SecretIDs[0]); err != nil {
				return fmt.Errorf("Could not open '%s': %v", name, err)
			}
		}
	}
	if fmtName == "" {
		f, err := chain.Probe(path)
		if err != nil {
			return cli.FileOpenError(path, err)
		}
		fmtName = f
	}
	prefix := ""
	switch fmtName {
	case "qcow2":
		prefix = "encrypt."
	case "luks":
	default:
		return fmt.Errorf("Format driver '%s' does not support option amendment", fmtName)
	}
	if pw == nil {
		return fmt.Errorf("Could not open '%s': Parameter '%skey-secret' is required for cipher", name, prefix)
	}
	pairs, _, err := format.SplitOptionList(olist)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	opt := map[string]string{}
	for _, p := range pairs {
		k, ok := strings.CutPrefix(p.Key, prefix)
		known := false
		for _, l := range luksAmendKeys {
			known = known || (ok && k == l)
		}
		if !known {
			return fmt.Errorf("Invalid parameter '%s' (ringblk amends LUKS key slots on their own)", p.Key)
		}
		opt[k] = p.Value
	}

	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return cli.FileOpenError(path, err)
	}
	defer f.Close()
	if err := raw.LockFile(f, path, raw.Options{}); err != nil {
		return fmt.Errorf("Could not open '%s': %w", name, err)
	}
	base, limit := int64(0), int64(-1)
	if fmtName == "qcow2" {
		hb := make([]byte, 1<<21)
		n, _ := f.ReadAt(hb, 0)
		h, err := format.ParseHeader(hb[:n])
		if err != nil {
			return fmt.Errorf("Could not open '%s': %v", name, err)
		}
		if h.CryptMethod != format.CryptLUKS {
			return fmt.Errorf("Could not open '%s': the image is not encrypted", name)
		}
		base, limit = int64(h.CryptoOffset), int64(h.CryptoLength)
	}
	read := func(p []byte, off int64) error {
		if off < 0 || (limit >= 0 && off+int64(len(p)) > limit) {
			return fmt.Errorf("key material at %d is outside the encryption header area", off)
		}
		_, err := f.ReadAt(p, base+off)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	hb := make([]byte, cl.HeaderLen)
	if err := read(hb, 0); err != nil {
		return fmt.Errorf("Could not open '%s': %v", name, err)
	}
	h, err := cl.Parse(hb)
	if err != nil {
		return fmt.Errorf("Could not open '%s': %v", name, err)
	}
	vol, err := cl.Unlock(h, pw, read)
	if err != nil {
		return fmt.Errorf("Could not open '%s': %v", name, err)
	}
	write := func(p []byte, off int64) error {
		_, err := f.WriteAt(p, base+off)
		return err
	}
	keyslot := -1
	if v, ok := opt["keyslot"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n >= cl.NumSlots {
			return fmt.Errorf("Invalid keyslot %s specified, must be between 0 and %d", v, cl.NumSlots-1)
		}
		keyslot = n
	}
	switch opt["state"] {
	case "active":
		err = luksAddKey(vol, opt, ia, keyslot, force, write)
	case "inactive":
		err = luksEraseKeys(vol, opt, ia, keyslot, force, read, write)
	case "":
		return fmt.Errorf("Parameter '%sstate' is required", prefix)
	default:
		return fmt.Errorf("Parameter '%sstate' does not accept value '%s'", prefix, opt["state"])
	}
	if err != nil {
		return err
	}
	return f.Sync()
}

func luksAddKey(vol *cl.Volume, opt map[string]string, ia *cli.ImageArgs, keyslot int, force bool, write func([]byte, int64) error) error {
	h := vol.Header
	if keyslot < 0 {
		for i := range h.Slots {
			if !h.Slots[i].Active {
				keyslot = i
				break
			}
		}
		if keyslot < 0 {
			return fmt.Errorf("Can't add a keyslot - all keyslots are in use")
		}
	}
	if h.Slots[keyslot].Active && !force {
		return fmt.Errorf("Refusing to overwrite active keyslot %d - please erase it first", keyslot)
	}
	id, ok := opt["new-secret"]
	if !ok {
		return fmt.Errorf("'new-secret' is required to activate a keyslot")
	}
	pw, err := ia.Objects.Secret(id)
	if err != nil {
		return err
	}
	iterTime := int64(2000)
	if v, ok := opt["iter-time"]; ok {
		if iterTime, err = strconv.ParseInt(v, 10, 64); err != nil || iterTime < 0 {
			return fmt.Errorf("Parameter 'iter-time' expects a number")
		}
	}
	iters, err := cl.Iterations(vol.Spec.Hash, vol.Spec.KeyBytes, iterTime, 1)
	if err != nil {
		return err
	}
	s := &h.Slots[keyslot]
	s.Iterations = max(iters, cl.MinIterations)
	if _, err := io.ReadFull(rand.Reader, s.Salt[:]); err != nil {
		return err
	}
	mat, err := cl.SlotMaterial(h, vol.Spec, s, pw, vol.Key, rand.Reader)
	if err != nil {
		return err
	}
	// Key material first, then the header that makes the slot active.
	if err := write(mat, int64(s.KeyOffset)*cl.SectorSize); err != nil {
		return err
	}
	s.Active = true
	return write(h.Marshal(), 0)
}

func luksEraseKeys(vol *cl.Volume, opt map[string]string, ia *cli.ImageArgs, keyslot int, force bool, read cl.ReadFunc, write func([]byte, int64) error) error {
	h := vol.Header
	active := 0
	for _, s := range h.Slots {
		if s.Active {
			active++
		}
	}
	var erase []int
	if keyslot >= 0 {
		if id, ok := opt["old-secret"]; ok {
			pw, err := ia.Objects.Secret(id)
			if err != nil {
				return err
			}
			if ok, err := cl.SlotOpens(h, keyslot, pw, read); err != nil {
				return err
			} else if !ok {
				return fmt.Errorf("Given keyslot %d doesn't contain the given old password for erase operation", keyslot)
			}
		}
		if !force && !h.Slots[keyslot].Active {
			return fmt.Errorf("Given keyslot %d is already erased (inactive) ", keyslot)
		}
		if !force && h.Slots[keyslot].Active && active == 1 {
			return fmt.Errorf("Attempt to erase the only active keyslot %d which will erase all the data in the image irreversibly - refusing operation", keyslot)
		}
		erase = []int{keyslot}
	} else {
		id, ok := opt["old-secret"]
		if !ok {
			return fmt.Errorf("'keyslot' or 'old-secret' is required to erase a keyslot")
		}
		pw, err := ia.Objects.Secret(id)
		if err != nil {
			return err
		}
		for i := range h.Slots {
			if ok, err := cl.SlotOpens(h, i, pw, read); err != nil {
				return err
			} else if ok {
				erase = append(erase, i)
			}
		}
		if len(erase) == 0 {
			return fmt.Errorf("No keyslots match given (old) password for erase operation")
		}
		if !force && len(erase) == active {
			return fmt.Errorf("All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation")
		}
	}
	// The header first (the slots stop being usable), then the key
	// material is overwritten with random bytes.
	for _, i := range erase {
		h.Slots[i].Active, h.Slots[i].Iterations, h.Slots[i].Salt = false, 0, [32]byte{}
	}
	if err := write(h.Marshal(), 0); err != nil {
		return err
	}
	junk := make([]byte, h.MaterialLen())
	for _, i := range erase {
		if _, err := io.ReadFull(rand.Reader, junk); err != nil {
			return err
		}
		if err := write(junk, int64(h.Slots[i].KeyOffset)*cl.SectorSize); err != nil {
			return err
		}
	}
	return nil
}
