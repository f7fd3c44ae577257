package cli

// --object on the command line (qemu-img, qemu-io): QOM objects given as
// key=value lists ("secret,id=sec0,data=password"). ringblk knows the
// secret type, which the encrypted-image code reads through Secret; other
// types are refused by name. A package that needs another type adds it to
// ObjectTypes.

import (
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/ringblk/ringblk/drivers/rbd"
	"os"
	"strings"

	"github.com/ringblk/ringblk/drivers/chain"
)

// ObjectTypes are the --object types ringblk accepts: each checks its
// properties (the Spec without qom-type and id) when the object is
// defined.
var ObjectTypes = map[string]func(id string, props chain.Spec) error{
	"secret": checkSecret,
}

type object struct {
	typ   string
	props chain.Spec
}

// objects are the --object definitions of this process, by id.
var objects = map[string]object{}

// resetObjects forgets every object (a command starts with none).
func resetObjects() { objects = map[string]object{} }

// AddObject defines an object from an --object argument. "help" and
// JSON object definitions are not supported.
func AddObject(def string) error {
	if strings.HasPrefix(def, "{") {
		return Usagef("--object: JSON object definitions are not supported by ringblk (use type,id=…,key=value)")
	}
	s := chain.Spec{}
	if err := chain.ParseKeyValues(def, "qom-type", s); err != nil {
		return err
	}
	typ := s["qom-type"]
	check, ok := ObjectTypes[typ]
	if !ok {
		return fmt.Errorf("invalid object type: %s", typ)
	}
	id := s["id"]
	if id == "" {
		return fmt.Errorf("Parameter 'id' is missing")
	}
	if _, dup := objects[id]; dup {
		return fmt.Errorf("attempt to add duplicate property '%s' to object (type 'container')", id)
	}
	delete(s, "qom-type")
	delete(s, "id")
	if err := check(id, s); err != nil {
		return err
	}
	objects[id] = object{typ: typ, props: s}
	return nil
}

func checkSecret(id string, p chain.Spec) error {
	_, hasData := p["data"]
	_, hasFile := p["file"]
	if hasData == hasFile {
		return fmt.Errorf("Either 'data' or 'file' must be provided for secret '%s'", id)
	}
	for k, v := range p {
		switch k {
		case "data", "file":
		case "format":
			if v != "raw" && v != "base64" {
				return fmt.Errorf("Parameter 'format' does not accept value '%s'", v)
			}
		case "keyid", "iv":
			return fmt.Errorf("secret '%s': encrypted secrets (keyid, iv) are not supported by ringblk", id)
		default:
			return fmt.Errorf("Property 'secret.%s' not found", k)
		}
	}
	return nil
}

// Secret returns the bytes of the secret object id (--object
// secret,id=ID,data=…|file=…[,format=base64]).
func Secret(id string) ([]byte, error) {
	o, ok := objects[id]
	if !ok || o.typ != "secret" {
		return nil, fmt.Errorf("No secret with id '%s'", id)
	}
	var b []byte
	if f, ok := o.props["file"]; ok {
		var err error
		if b, err = os.ReadFile(f); err != nil {
			return nil, fmt.Errorf("Unable to read %s: %v", f, UnwrapPathErr(err))
		}
	} else {
		b = []byte(o.props["data"])
	}
	if o.props["format"] == "base64" {
		d, err := base64.StdEncoding.DecodeString(string(b))
		if err != nil {
			return nil, fmt.Errorf("secret '%s': bad base64 data: %v", id, err)
		}
		b = d
	}
	return b, nil
}

// TakeGlobalOpts takes the options every qemu-img command accepts the
// same way out of args: --object DEF (defined at once, AddObject) and
// --image-opts (reported: the command's image operands are then option
// strings). The rest is the command's own command line. "--" ends the
// scan, as it ends the options.
func TakeGlobalOpts(args []string) (rest []string, imageOpts bool, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return append(rest, args[i:]...), imageOpts, nil
		case a == "--image-opts":
			imageOpts = true
		case a == "--object":
			if i+1 >= len(args) {
				return nil, false, getoptf("option '--object' requires an argument")
			}
			i++
			if err := AddObject(args[i]); err != nil {
				return nil, false, err
			}
		case strings.HasPrefix(a, "--object="):
			if err := AddObject(strings.TrimPrefix(a, "--object=")); err != nil {
				return nil, false, err
			}
		default:
			rest = append(rest, a)
		}
	}
	return rest, imageOpts, nil
}

// ImageFile reduces an image named by options (a json: filename, or an
// --image-opts string when imageOpts) to the file and format the qemu-img
// commands open: a format driver (qcow2, raw; none: probed) over a file,
// with nothing else said but node names. Other option trees (filters,
// null-co given as --image-opts, runtime options) are refused by name. A
// plain name, and a json: null-co filename (which OpenBlk reads itself),
// come back as they are.
func ImageFile(name, format string, imageOpts bool) (file, fmtName string, err error) {
	file, fmtName, _, err = ImageFileCache(name, format, imageOpts)
	return file, fmtName, err
}

// ImageFileCache is ImageFile that also returns the cache mode the
// options ask for: "none" for cache.direct=on, else "".
func ImageFileCache(name, format string, imageOpts bool) (file, fmtName, cache string, err error) {
	if !imageOpts && !chain.IsJSONFilename(name) {
		return FilePath(name), format, "", nil
	}
	file, fmtName, err = imageFile(name, format, imageOpts)
	if err != nil {
		return "", "", "", err
	}
	s, _ := specOf(name, imageOpts)
	if v, ok, _ := s.Bool("cache.direct"); ok && v {
		cache = "none"
	}
	return file, fmtName, cache, nil
}

// specOf parses an image name given as options.
func specOf(name string, imageOpts bool) (chain.Spec, error) {
	if imageOpts {
		return ImageOptsSpec(name)
	}
	return chain.ParseJSONFilename(name)
}

func imageFile(name, format string, imageOpts bool) (file, fmtName string, err error) {
	s, err := specOf(name, imageOpts)
	if err != nil {
		return "", "", fmt.Errorf("Could not open '%s': %v", name, err)
	}
	switch s["driver"] {
	case "null-co", "null-aio":
		if !imageOpts {
			return name, format, nil
		}
	}
	if s["driver"] == "rbd" {
		return rbdImageFile(name, format, s)
	}
	d := s["driver"]
	delete(s, "driver")
	delete(s, "node-name")
	delete(s, "file.node-name")
	if fd, ok := s["file.driver"]; ok && fd != "file" {
		return "", "", &WholeTreeError{fmt.Sprintf("Could not open '%s': ringblk's image commands take a format over a plain file here, not the '%s' driver", name, fd)}
	}
	delete(s, "file.driver")
	for _, k := range []string{"filename", "file.filename", "file"} {
		if v, ok := s[k]; ok && v != chain.Null && file == "" {
			file = v
			delete(s, k)
		}
	}
	for k := range s {
		if isKeyOption(k) {
			// Key secrets (ImageSecretIDs) and the backing file's own
			// driver and name: the chain follows the image's backing.
			continue
		}
		switch {
		case k == "l2-cache-size", k == "l2-cache-entry-size", k == "refcount-cache-size", k == "cache-size",
			k == "cache-clean-interval", k == "overlap-check", strings.HasPrefix(k, "overlap-check."), k == "file.aio",
			k == "cache.direct", k == "cache.no-flush":
			// Tuning of how the image is read, not what: accepted,
			// no effect on these commands.
			continue
		}
		return "", "", &WholeTreeError{fmt.Sprintf("Could not open '%s': ringblk's image commands do not take the option '%s' here", name, k)}
	}
	if file == "" {
		return "", "", fmt.Errorf("Could not open '%s': A block device must be specified for \"file\"", name)
	}
	switch d {
	case "", "qcow2", "raw", "luks":
	case "file":
		d = "raw"
	default:
		return "", "", &WholeTreeError{fmt.Sprintf("Could not open '%s': ringblk's image commands take a format over a plain file here, not the '%s' driver", name, d)}
	}
	if format != "" && d != "" && format != d {
		return "", "", fmt.Errorf("Could not open '%s': the options name driver '%s', -f names '%s'", name, d, format)
	}
	if d == "" {
		d = format
	}
	return file, d, nil
}

// WholeTreeError is ImageFile's refusal of an option tree that is more
// than a format over a plain file (a filter such as blkdebug, a driver's
// runtime options): the commands that open images as nodes (ImageArgs.Open,
// info) open such a tree whole with chain.OpenSpec, as qemu-io does; the
// commands that work on a file path refuse it with this message.
type WholeTreeError struct{ msg string }

func (e *WholeTreeError) Error() string { return e.msg }

// IsWholeTree reports whether err is a WholeTreeError.
func IsWholeTree(err error) bool {
	var w *WholeTreeError
	return errors.As(err, &w)
}

// rbdImageFile is the rbd: name of a driver=rbd option tree (the image
// commands open rbd: names). A key-secret cannot be carried by the name
// (names are printed); such trees open in qemu-io, not here.
func rbdImageFile(name, format string, s chain.Spec) (file, fmtName string, err error) {
	delete(s, "node-name")
	if _, ok := s["key-secret"]; ok {
		return "", "", fmt.Errorf("Could not open '%s': ringblk's image commands do not take key-secret for RBD here (use keyring= or the config file's keyring)", name)
	}
	rs, err := rbd.FromOptions(s)
	if err != nil {
		return "", "", fmt.Errorf("Could not open '%s': %v", name, err)
	}
	if format == "" {
		format = "raw"
	}
	return rs.String(), format, nil
}

// FilePath is the local file an image name means: the name itself, or
// for QEMU's "file:" protocol prefix the rest, made "./name" when a colon
// in it could read as another protocol prefix ("file:image:top.qcow2" is
// "./image:top.qcow2", as qemu-img names it).
func FilePath(name string) string {
	rest, ok := strings.CutPrefix(name, "file:")
	if !ok {
		return name
	}
	if i := strings.IndexByte(rest, ':'); i >= 0 && !strings.Contains(rest[:i], "/") {
		return "./" + rest
	}
	return rest
}

// PlainImageOpts reports whether an --image-opts string says no more than
// a format over a plain file (driver, file.driver=file, the file name,
// node names): qemu-img then names the image by its file, not by a
// json: rendering of the options.
func PlainImageOpts(opts string) bool {
	s, err := ImageOptsSpec(opts)
	if err != nil {
		return false
	}
	for k, v := range s {
		switch k {
		case "driver", "filename", "file", "file.filename", "node-name", "file.node-name":
		case "file.driver":
			if v != "file" {
				return false
			}
		default:
			return false
		}
	}
	return true
}
