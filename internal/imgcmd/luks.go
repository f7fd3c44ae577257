package imgcmd

// LUKS in the qemu-img commands: create -f luks (and the encrypt.* options
// of qcow2 share the parser), and the format-specific info of a LUKS
// header, raw or inside a qcow2 image.

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/block"
	cl "github.com/ringblk/ringblk/crypto/luks"
	luksdrv "github.com/ringblk/ringblk/drivers/luks"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/internal/cli"
)

// luksKeys are the LUKS creation options in qemu-img's order (the order
// of its "Formatting" line).
var luksKeys = []string{"key-secret", "cipher-alg", "cipher-mode", "ivgen-alg", "ivgen-hash-alg", "hash-alg", "iter-time"}

// luksOpts is a parsed set of LUKS creation options.
type luksOpts struct {
	given map[string]string // as written, by key without prefix
	co    cl.CreateOptions
}

// takeLuksOpts takes the LUKS options (with prefix, "" or "encrypt.")
// out of pairs; the rest is returned.
func takeLuksOpts(pairs []format.OptionPair, prefix string) (*luksOpts, []format.OptionPair) {
	lo := &luksOpts{given: map[string]string{}}
	var rest []format.OptionPair
	for _, p := range pairs {
		k, ok := strings.CutPrefix(p.Key, prefix)
		if ok && isLuksKey(k) {
			lo.given[k] = p.Value
			continue
		}
		rest = append(rest, p)
	}
	return lo, rest
}

func isLuksKey(k string) bool {
	for _, l := range luksKeys {
		if k == l {
			return true
		}
	}
	return false
}

// line is the options' part of the "Formatting" line.
func (lo *luksOpts) line(prefix string) string {
	var b strings.Builder
	for _, k := range luksKeys {
		if v, ok := lo.given[k]; ok {
			fmt.Fprintf(&b, " %s%s=%s", prefix, k, format.EscapeOptionValue(v))
		}
	}
	return b.String()
}

// resolve checks the values and looks the secret up, in QEMU's words.
func (lo *luksOpts) resolve(prefix string, objs *cli.Objects) error {
	enum := func(k string, vals ...string) (string, error) {
		v, ok := lo.given[k]
		if !ok {
			return "", nil
		}
		for _, ok := range vals {
			if v == ok {
				return v, nil
			}
		}
		return "", fmt.Errorf("Parameter '%s%s' does not accept value '%s'", prefix, k, v)
	}
	hashes := []string{"md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160"}
	var err error
	co := &lo.co
	if co.CipherAlg, err = enum("cipher-alg", "aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128", "serpent-128", "serpent-192", "serpent-256", "twofish-128", "twofish-192", "twofish-256", "sm4"); err != nil {
		return err
	}
	if co.CipherMode, err = enum("cipher-mode", "ecb", "cbc", "xts", "ctr"); err != nil {
		return err
	}
	if co.IVGen, err = enum("ivgen-alg", "plain", "plain64", "essiv"); err != nil {
		return err
	}
	if co.IVHash, err = enum("ivgen-hash-alg", hashes...); err != nil {
		return err
	}
	if co.Hash, err = enum("hash-alg", hashes...); err != nil {
		return err
	}
	if v, ok := lo.given["iter-time"]; ok {
		n, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil || n < 0 {
			return fmt.Errorf("Parameter '%siter-time' expects a number", prefix)
		}
		co.IterTime = n
	}
	if _, err := co.Spec(); err != nil {
		return err
	}
	if objs == nil { // measure: the layout only
		return nil
	}
	id, ok := lo.given["key-secret"]
	if !ok {
		return fmt.Errorf("Parameter '%skey-secret' is required for cipher", prefix)
	}
	if co.Password, err = objs.Secret(id); err != nil {
		return err
	}
	return nil
}

// createLuks is create -f luks.
func createLuks(r *createReq, objs *cli.Objects) (string, error) {
	lo, rest := takeLuksOpts(r.pairs, "")
	for _, p := range rest {
		if p.Key != "preallocation" || p.Value != "off" {
			return "", cli.Usagef("%s: Invalid parameter '%s'", r.file, p.Key)
		}
	}
	if !r.hasSize {
		return "", cli.Usagef("%s: Image creation needs a size parameter", r.file)
	}
	line := fmt.Sprintf("Formatting '%s', fmt=luks size=%d%s", r.file, r.size, lo.line(""))
	for _, p := range rest {
		line += " preallocation=" + p.Value
	}
	if err := lo.resolve("", objs); err != nil {
		return line, fmt.Errorf("%s: %v", r.file, err)
	}
	err := withNewFile(r.file, func(file *block.Node) error {
		_, err := luksdrv.Create(file, r.size, lo.co)
		return err
	})
	if err != nil {
		return line, createErr(r.file, err)
	}
	return line, nil
}

// withNewFile runs fn on a raw node over path (made if missing, not
// truncated: fn empties it once the node holds the image locks).
func withNewFile(path string, fn func(file *block.Node) error) error {
	return withNewFiles([]string{path}, func(files []*block.Node) error { return fn(files[0]) })
}

// luksInfo is the format-specific data of a LUKS header, in qemu-img's
// key order; qcow2 puts "format": "luks" in it.
func luksInfo(h *cl.Header, qcow2 bool) *object {
	spec, _ := cl.ParseSpec(h.CipherName, h.CipherMode, h.HashSpec, int(h.KeyBytes))
	o := newObject()
	o.set("ivgen-alg", spec.IVGen.String())
	o.set("hash-alg", spec.Hash)
	o.set("cipher-alg", spec.Alg)
	o.set("uuid", h.UUID)
	if spec.IVGen == cl.IVEssiv {
		o.set("ivgen-hash-alg", spec.IVHash)
	}
	if qcow2 {
		o.set("format", "luks")
	}
	o.set("cipher-mode", spec.Mode.String())
	var slots []*object
	for _, s := range h.Slots {
		so := newObject()
		so.set("active", s.Active)
		if s.Active {
			so.set("iters", s.Iterations)
		}
		so.set("key-offset", int64(s.KeyOffset)*cl.SectorSize)
		if s.Active {
			so.set("stripes", s.Stripes)
		}
		slots = append(slots, so)
	}
	o.set("slots", slots)
	o.set("payload-offset", h.PayloadBytes())
	o.set("master-key-iters", h.MKIterations)
	return o
}

// dumpObject prints a nested object as qemu-img's human output does:
// "key: value", a nested object or list under "key:" four spaces
// deeper, list items as "[i]:".
func dumpObject(b *strings.Builder, o *object, indent int) {
	pad := strings.Repeat(" ", indent)
	for _, k := range o.keys {
		name := strings.ReplaceAll(k, "-", " ")
		switch v := o.vals[k].(type) {
		case *object:
			fmt.Fprintf(b, "%s%s:\n", pad, name)
			dumpObject(b, v, indent+4)
		case []*object:
			fmt.Fprintf(b, "%s%s:\n", pad, name)
			for i, e := range v {
				fmt.Fprintf(b, "%s    [%d]:\n", pad, i)
				dumpObject(b, e, indent+8)
			}
		case []string:
			fmt.Fprintf(b, "%s%s:\n", pad, name)
			for i, e := range v {
				fmt.Fprintf(b, "%s    [%d]: %s\n", pad, i, e)
			}
		default:
			fmt.Fprintf(b, "%s%s: %v\n", pad, name, v)
		}
	}
}

// readQcowLuks reads the LUKS header of an encrypted qcow2 image (the
// full disk encryption extension points at it); nothing for others.
func (o *openedImage) readQcowLuks() error {
	h := o.qcow.Header
	if h.CryptMethod != format.CryptLUKS {
		return nil
	}
	hb := make([]byte, cl.HeaderLen)
	if _, err := o.f.ReadAt(hb, int64(h.CryptoOffset)); err != nil {
		return fmt.Errorf("Could not read encryption header: %v", err)
	}
	lh, err := cl.Parse(hb)
	if err != nil {
		return err
	}
	o.luks = lh
	return nil
}

// qcowEncrypt are the encryption options of a qcow2 create: encrypt.*
// and the legacy encryption=on.
type qcowEncrypt struct {
	format     string // "luks", "aes" or "" (none)
	formatLine string // the " encryption=… encrypt.…" part of the Formatting line
	lo         *luksOpts
	legacy     bool // encryption=on given
}

// takeQcowEncrypt takes the encryption options out of r.pairs. An
// unknown encrypt.* key is left for the qcow2 parser to refuse.
func takeQcowEncrypt(r *createReq) (*qcowEncrypt, error) {
	lo, rest := takeLuksOpts(r.pairs, "encrypt.")
	e := &qcowEncrypt{lo: lo}
	var fmtGiven, legacyVal string
	var hasFmt bool
	kept := rest[:0]
	for _, p := range rest {
		switch p.Key {
		case "encrypt.format":
			fmtGiven, hasFmt = p.Value, true
		case "encryption":
			legacyVal, e.legacy = p.Value, true
		default:
			kept = append(kept, p)
		}
	}
	r.pairs = kept
	var b strings.Builder
	if e.legacy {
		fmt.Fprintf(&b, " encryption=%s", legacyVal)
	}
	if hasFmt {
		fmt.Fprintf(&b, " encrypt.format=%s", fmtGiven)
	}
	b.WriteString(lo.line("encrypt."))
	e.formatLine = b.String()
	switch {
	case hasFmt && e.legacy:
		return e, fmt.Errorf("'encrypt.format' and its alias 'encryption' can't be used at the same time")
	case e.legacy:
		on, err := onOffValue(legacyVal)
		if err != nil {
			return e, fmt.Errorf("Parameter 'encryption' expects 'on' or 'off'")
		}
		if on {
			e.format = "aes"
		}
	case hasFmt:
		if fmtGiven != "luks" && fmtGiven != "aes" {
			return e, fmt.Errorf("Parameter 'format' does not accept value '%s'", fmtGiven)
		}
		e.format = fmtGiven
	case len(lo.given) > 0:
		return e, fmt.Errorf("Parameter 'encrypt.format' is missing")
	}
	return e, nil
}

func onOffValue(v string) (bool, error) {
	switch v {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, fmt.Errorf("bad value")
}

// setup resolves the options for a LUKS image, and for a legacy AES one
// (aes.go: the key secret only).
func (e *qcowEncrypt) setup(objs *cli.Objects) error {
	switch e.format {
	case "":
		return nil
	case "aes":
		return e.setupAES(objs)
	}
	return e.lo.resolve("encrypt.", objs)
}

// readCryptoArea reads the encryption area of the qcow2 image at path
// (nil when it is not encrypted).
func readCryptoArea(path string, h *format.Header) ([]byte, error) {
	if h.CryptMethod != format.CryptLUKS {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	area := make([]byte, h.CryptoLength)
	if _, err := f.ReadAt(area, int64(h.CryptoOffset)); err != nil {
		return nil, fmt.Errorf("Could not read encryption header: %v", err)
	}
	return area, nil
}

// installQcowEncryption gives the new, empty qcow2 image at path the
// encryption area of another (qcow2.InstallEncryption).
func installQcowEncryption(path string, area []byte) error {
	return withQcow2(path, func(n *block.Node) error { return qcow2.InstallEncryption(n, area) })
}

// encryptQcow2 turns the new, empty qcow2 image at path into a
// LUKS-encrypted one.
func encryptQcow2(path string, co cl.CreateOptions) error {
	return withQcow2(path, func(n *block.Node) error { return qcow2.SetupEncryption(n, co) })
}

// withQcow2 runs fn on a qcow2 node over the image at path (its backing
// file ignored).
func withQcow2(path string, fn func(n *block.Node) error) error {
	return withNewFile(path, func(file *block.Node) error {
		g := file.Graph()
		drv := qcow2.New(file, qcow2.DriverOptions{IgnoreBacking: true})
		// The driver's reference on file: a graph call, so it runs on
		// the main Context (this goroutine is not its owner).
		g.Control(file.Ref)
		n, err := g.Open(drv, block.Options{Name: "encrypt"})
		if err != nil {
			drv.Release()
			return err
		}
		err = fn(n)
		if cerr := n.Unref(); err == nil {
			err = cerr
		}
		return err
	})
}

type targetEncryption int

const (
	notEncrypted targetEncryption = iota
	encryptedZeroInit
	encryptedNoZeroInit // a luks payload, or qcow2 with preallocated clusters
)

// targetSecret gives convert's target the key secret its -o options name
// (key-secret for luks, encrypt.key-secret for qcow2), and says whether a
// created target reads as zeroes.
func targetSecret(r *convertReq, bo *cli.BlkOptions) (targetEncryption, error) {
	if len(r.olist) == 0 {
		if r.dstFmt == "luks" {
			return encryptedNoZeroInit, nil
		}
		return notEncrypted, nil
	}
	pairs, _, err := format.SplitOptionList(r.olist)
	if err != nil {
		return notEncrypted, cli.Usagef("%v", err)
	}
	key := "encrypt.key-secret"
	if r.dstFmt == "luks" {
		key = "key-secret"
	}
	var id string
	prealloc := false
	for _, p := range pairs {
		switch p.Key {
		case key:
			id = p.Value
		case "preallocation":
			prealloc = p.Value != "off"
		}
	}
	state := notEncrypted
	if id != "" {
		b, err := r.args.Objects.Secret(id)
		if err != nil {
			return notEncrypted, err
		}
		bo.KeySecrets = [][]byte{b}
		state = encryptedZeroInit
		if r.dstFmt == "luks" || prealloc {
			state = encryptedNoZeroInit
		}
	}
	if r.dstFmt == "luks" {
		state = encryptedNoZeroInit
	}
	return state, nil
}

// imageOptsName is the json: name qemu-img shows for an image named by
// --image-opts: the options as a JSON object, dotted keys nested.
func imageOptsName(spec string) string {
	kvs, err := cli.SplitKeyValues(spec, "")
	if err != nil {
		return spec
	}
	// Options that only say driver and file make no json: name: the
	// file's name is the image's (QEMU's bdrv_refresh_filename).
	plain := ""
	for _, kv := range kvs {
		switch kv.Key {
		case "driver", "file.driver", "node-name", "file.node-name":
		case "file.filename", "filename", "file":
			plain = kv.Value
		default:
			if weakImageOpt(kv.Key) { // amend_tree.go
				continue
			}
			plain = ""
			goto named
		}
	}
	if plain != "" {
		return plain
	}
named:
	if n := jsonName(kvs); n != "" {
		return n
	}
	return spec
}

// jsonName renders options given as dotted keys as a json: name, the
// way qemu-img names an image whose options make no plain filename; ""
// if they cannot be rendered.
func jsonName(kvs []cli.KeyValue) string {
	root := map[string]any{}
	for _, kv := range kvs {
		m := root
		parts := strings.Split(kv.Key, ".")
		// encrypt.* stays one key, as QEMU prints it.
		if len(parts) > 1 && parts[len(parts)-2] == "encrypt" {
			parts = append(parts[:len(parts)-2], parts[len(parts)-2]+"."+parts[len(parts)-1])
		}
		for _, p := range parts[:len(parts)-1] {
			sub, ok := m[p].(map[string]any)
			if !ok {
				sub = map[string]any{}
				m[p] = sub
			}
			m = sub
		}
		m[parts[len(parts)-1]] = kv.Value
	}
	if f, ok := root["file"].(map[string]any); ok {
		if _, ok := f["driver"]; !ok {
			f["driver"] = "file"
		}
	}
	b, err := json.Marshal(root)
	if err != nil {
		return ""
	}
	return "json:" + strings.NewReplacer(`":`, `": `, `,"`, `, "`).Replace(string(b))
}

// luksArea is the bytes the LUKS header and key slots of options lo take.
func (lo *luksOpts) area(prefix string) (int64, error) {
	if err := lo.resolve(prefix, nil); err != nil {
		return 0, err
	}
	spec, err := lo.co.Spec()
	if err != nil {
		return 0, err
	}
	return cl.AreaLen(spec.KeyBytes), nil
}

// measureLuks is QEMU's estimate for -O luks: the header area and the
// whole guest, allocated or not (unallocated payload is ciphertext too).
func measureLuks(pairs []format.OptionPair, size int64, src *imageChain) (*measureInfo, error) {
	lo, rest := takeLuksOpts(pairs, "")
	for _, p := range rest {
		if p.Key != "preallocation" {
			return nil, cli.Usagef("Invalid parameter '%s'", p.Key)
		}
	}
	area, err := lo.area("")
	if err != nil {
		return nil, err
	}
	if src != nil {
		size = src.size()
	}
	n := area + size
	return &measureInfo{required: n, fullyAllocated: n}, nil
}
