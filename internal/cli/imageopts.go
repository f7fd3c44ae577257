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
)

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

// Resolve turns an image name into the path to open and fills bo: with
// --image-opts, name is an option list (format, read-only, key secrets
// looked up among the --object secrets); otherwise name is the path.
func (a *ImageArgs) Resolve(name string, bo *BlkOptions) (string, error) {
	if !a.ImageOpts {
		return name, nil
	}
	sp, err := ParseImageSpec(name)
	if err != nil {
		return "", err
	}
	if sp.Format != "" {
		bo.Format = sp.Format
	}
	if sp.ReadOnly {
		bo.ReadOnly = true
	}
	return sp.Path, a.secrets(sp.SecretIDs, bo)
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
	if err != nil {
		return nil, fmt.Errorf("Could not open '%s': %v", name, err)
	}
	img, err := OpenBlkIn(c, g, path, bo)
	if err != nil && path != name {
		return nil, &wordedError{msg: fmt.Sprintf("Could not open '%s': %v", name, OpenCause(err)), err: err}
	}
	return img, err
}
