package cli

// --object and --image-opts on a command line: the secrets an encrypted
// image needs, and the image named by its options instead of a file name.
// Commands add ObjectLong to their OptSpec, hand every option to
// ImageArgs.Take, and turn each image name into a path and BlkOptions with
// ImageArgs.Resolve.

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
)

// KeyValue is one item of a QemuOpts-style list ("a=b,c=d").
type KeyValue struct {
	Key, Value string
}

// SplitKeyValues splits a QemuOpts-style list: items separated by ',',
// ",," a literal comma inside a value, key=value items, and a first item
// without '=' taken as the value of implied (when implied is not "").
func SplitKeyValues(s, implied string) ([]KeyValue, error) {
	var out []KeyValue
	for i := 0; s != "" || i == 0; i++ {
		var item strings.Builder
		for s != "" {
			c := s[0]
			if c == ',' {
				if len(s) > 1 && s[1] == ',' {
					item.WriteByte(',')
					s = s[2:]
					continue
				}
				s = s[1:]
				break
			}
			item.WriteByte(c)
			s = s[1:]
		}
		it := item.String()
		k, v, ok := strings.Cut(it, "=")
		switch {
		case ok:
			out = append(out, KeyValue{k, v})
		case i == 0 && implied != "":
			out = append(out, KeyValue{implied, it})
		case it == "":
			if s == "" {
				return out, nil
			}
			return nil, fmt.Errorf("Invalid parameter ''")
		default:
			return nil, fmt.Errorf("Invalid parameter '%s'", it)
		}
		if s == "" {
			break
		}
	}
	return out, nil
}

// Objects is a command's view of the --object registry (AddObject,
// Secret): the objects themselves are the process's.
type Objects struct{}

// Add defines the object of one --object argument.
func (o *Objects) Add(spec string) error { return AddObject(spec) }

// Secret returns the bytes of secret id.
func (o *Objects) Secret(id string) ([]byte, error) { return Secret(id) }

// ObjectLong are the long options ImageArgs.Take consumes.
var ObjectLong = map[string]bool{"object": true, "image-opts": false}

// WithObjects returns spec with ObjectLong added.
func WithObjects(spec OptSpec) OptSpec {
	long := map[string]bool{}
	for k, v := range spec.Long {
		long[k] = v
	}
	for k, v := range ObjectLong {
		long[k] = v
	}
	return OptSpec{Short: spec.Short, Long: long}
}

// ImageArgs are a command's --object definitions and whether its image
// names are --image-opts option lists.
type ImageArgs struct {
	Objects   Objects
	ImageOpts bool
}

// Take consumes o if it is --object or --image-opts.
func (a *ImageArgs) Take(o Opt) (bool, error) {
	switch o.Name {
	case "object":
		return true, a.Objects.Add(o.Val)
	case "image-opts":
		a.ImageOpts = true
		return true, nil
	}
	return false, nil
}

// ImageSpec is an image named by options (--image-opts).
type ImageSpec struct {
	Path     string
	Format   string
	ReadOnly bool
	// SecretIDs are the key-secret ids: [0] the image's, [i] its i-th
	// backing file's ("" when not given).
	SecretIDs []string
}

// ParseImageSpec reads an --image-opts list: driver=FMT, file.filename=
// (or filename=), file.driver=file, key-secret= (luks) or
// encrypt.key-secret= (qcow2), the same under backing. for backing files
// (backing.driver and backing.file.* are accepted: the chain opener
// follows the image's own backing name and format), read-only=on|off.
func ParseImageSpec(s string) (*ImageSpec, error) {
	kvs, err := SplitKeyValues(s, "")
	if err != nil {
		return nil, err
	}
	sp := &ImageSpec{}
	for _, kv := range kvs {
		k, v := kv.Key, kv.Value
		depth := 0
		for strings.HasPrefix(k, "backing.") {
			k = k[len("backing."):]
			depth++
		}
		switch {
		case k == "key-secret" || k == "encrypt.key-secret":
			for len(sp.SecretIDs) <= depth {
				sp.SecretIDs = append(sp.SecretIDs, "")
			}
			sp.SecretIDs[depth] = v
		case depth > 0 && (k == "driver" || k == "file.filename" || k == "file.driver" || k == "filename"):
		case k == "driver":
			sp.Format = v
			if v == "file" || v == "host_device" {
				sp.Format = "raw"
			}
		case k == "file.filename" || k == "filename":
			sp.Path = v
		case k == "file.driver":
			if v != "file" && v != "host_device" {
				return nil, fmt.Errorf("--image-opts: file.driver=%s is not supported (file only)", v)
			}
		case k == "read-only":
			b, err := onOff(v)
			if err != nil {
				return nil, fmt.Errorf("Parameter 'read-only' expects 'on' or 'off'")
			}
			sp.ReadOnly = b
		case k == "encrypt.format":
		default:
			return nil, fmt.Errorf("--image-opts: option '%s' is not supported by ringblk", kv.Key)
		}
	}
	if sp.Path == "" {
		return nil, fmt.Errorf("A block device must be specified for \"file\"")
	}
	return sp, nil
}

func onOff(v string) (bool, error) {
	switch v {
	case "on", "true", "yes":
		return true, nil
	case "off", "false", "no":
		return false, nil
	}
	return strconv.ParseBool(v)
}

// Resolve turns an image name into the path to open and fills bo: an
// --image-opts list or a json: filename gives the file and format
// (ImageFile) and the key secrets (ImageSecretIDs, looked up among the
// --object secrets); a plain name is the path (FilePath).
func (a *ImageArgs) Resolve(name string, bo *BlkOptions) (string, error) {
	if !a.ImageOpts && !chain.IsJSONFilename(name) {
		return FilePath(name), nil
	}
	ids, err := ImageSecretIDs(name, a.ImageOpts)
	if err != nil {
		return "", err
	}
	path, f, cache, err := ImageFileCache(name, bo.Format, a.ImageOpts)
	if err != nil {
		return "", err
	}
	if f == "null" || (f == "" && chain.IsJSONFilename(path)) {
		return path, nil
	}
	bo.Format = f
	if cache != "" {
		bo.Cache = cache // cache.direct=on
	}
	if sp, err := ParseImageSpec(name); err == nil && sp.ReadOnly {
		bo.ReadOnly = true
	}
	return path, a.secrets(ids, bo)
}

// isKeyOption tells whether an image option names a key secret, the
// encryption format, or the backing file's driver, file or key secret
// ("backing.driver", "backing.file.filename", …): what ImageFile leaves
// to ImageSecretIDs and to the chain opener.
func isKeyOption(k string) bool {
	depth := 0
	for strings.HasPrefix(k, "backing.") {
		k = k[len("backing."):]
		depth++
	}
	switch k {
	case "key-secret", "encrypt.key-secret", "encrypt.format":
		return true
	case "driver", "file.filename", "file.driver", "filename", "node-name", "file.node-name":
		return depth > 0
	}
	return false
}

// ImageSecretIDs are the key-secret ids an --image-opts list or a json:
// filename gives: [0] the image's (key-secret= for luks,
// encrypt.key-secret= for qcow2), [i] its i-th backing file's
// (backing.…); "" where none is given.
func ImageSecretIDs(name string, imageOpts bool) ([]string, error) {
	var s chain.Spec
	var err error
	if imageOpts {
		s, err = ImageOptsSpec(name)
	} else {
		s, err = chain.ParseJSONFilename(name)
	}
	if err != nil {
		return nil, fmt.Errorf("Could not open '%s': %v", name, err)
	}
	var ids []string
	for k, v := range s {
		depth := 0
		for strings.HasPrefix(k, "backing.") {
			k = k[len("backing."):]
			depth++
		}
		if k == "key-secret" || k == "encrypt.key-secret" {
			for len(ids) <= depth {
				ids = append(ids, "")
			}
			ids[depth] = v
		}
	}
	return ids, nil
}

// KeySecretsOf are the key secrets an image name's options give
// (ImageSecretIDs), looked up among the --object secrets; nil for a plain
// name.
func KeySecretsOf(name string, imageOpts bool) ([][]byte, error) {
	if !imageOpts && !chain.IsJSONFilename(name) {
		return nil, nil
	}
	ids, err := ImageSecretIDs(name, imageOpts)
	if err != nil {
		return nil, err
	}
	var bo BlkOptions
	err = (&ImageArgs{}).secrets(ids, &bo)
	return bo.KeySecrets, err
}

func (a *ImageArgs) secrets(ids []string, bo *BlkOptions) error {
	bo.KeySecrets = nil
	for _, id := range ids {
		var b []byte
		if id != "" {
			var err error
			if b, err = a.Objects.Secret(id); err != nil {
				return err
			}
		}
		bo.KeySecrets = append(bo.KeySecrets, b)
	}
	return nil
}

// OpenCause is an open failure without qemu-img's "Could not open
// 'NAME': " prefix, as qemu-io words it.
func OpenCause(err error) error {
	var w *wordedError
	if errors.As(err, &w) && w.err != nil {
		return PlainErr(w.err)
	}
	return PlainErr(err)
}

// Open opens the image a command line names (a path, or an --image-opts
// list) in a Context and graph of its own; a failure names the image as
// the user wrote it.
func (a *ImageArgs) Open(name string, bo BlkOptions) (*BlkImage, error) {
	path, err := a.Resolve(name, &bo)
	if IsWholeTree(err) {
		return a.openTree(nil, nil, name, bo)
	}
	if err != nil {
		return nil, fmt.Errorf("Could not open '%s': %v", name, err)
	}
	img, err := OpenBlk(path, bo)
	if err != nil && path != name {
		return nil, &wordedError{msg: fmt.Sprintf("Could not open '%s': %v", name, OpenCause(err)), err: err}
	}
	return img, err
}

// OpenIn is Open into an existing graph (OpenBlkIn).
func (a *ImageArgs) OpenIn(c *aio.Context, g *block.Graph, name string, bo BlkOptions) (*BlkImage, error) {
	path, err := a.Resolve(name, &bo)
	if IsWholeTree(err) {
		return a.openTree(c, g, name, bo)
	}
	if err != nil {
		return nil, fmt.Errorf("Could not open '%s': %v", name, err)
	}
	img, err := OpenBlkIn(c, g, path, bo)
	if err != nil && path != name {
		return nil, &wordedError{msg: fmt.Sprintf("Could not open '%s': %v", name, OpenCause(err)), err: err}
	}
	return img, err
}

// openTree opens an image named by an option tree that is more than a
// format over a file (WholeTreeError) as a whole tree of nodes,
// chain.OpenSpec, into g (nil: a Context and graph of its own). The
// tree's own keys win over bo's; -f must agree with its top driver.
func (a *ImageArgs) openTree(c *aio.Context, g *block.Graph, name string, bo BlkOptions) (*BlkImage, error) {
	s, err := specOf(name, a.ImageOpts)
	if err != nil {
		return nil, fmt.Errorf("Could not open '%s': %v", name, err)
	}
	if d, ok := s["driver"]; ok && bo.Format != "" && d != bo.Format {
		return nil, fmt.Errorf("Could not open '%s': the options name driver '%s', -f names '%s'", name, d, bo.Format)
	} else if !ok && bo.Format != "" {
		s["driver"] = bo.Format
	}
	var img *BlkImage
	if g == nil {
		img, err = OpenBlkSpec(s, bo)
	} else {
		img, err = OpenBlkSpecIn(c, g, s, bo)
	}
	if err != nil {
		return nil, &wordedError{msg: fmt.Sprintf("Could not open '%s': %v", name, OpenCause(err)), err: err}
	}
	return img, nil
}
