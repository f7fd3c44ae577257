package cli

// The --object registry of one command line. QEMU's commands create
// user-creatable objects from "--object TYPE,id=ID,key=value,…"; the one
// type qemu-img and qemu-io need from ringblk is secret, whose bytes an
// image's key-secret=ID (LUKS) names. Other --object types are refused by
// name, so a command line that needs one fails clearly.

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
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

// Objects holds the objects a command line defined.
type Objects struct {
	secrets map[string][]byte
}

// Add defines the object of one --object argument.
func (o *Objects) Add(spec string) error {
	kvs, err := SplitKeyValues(spec, "qom-type")
	if err != nil {
		return err
	}
	props := map[string]string{}
	for _, kv := range kvs {
		props[kv.Key] = kv.Value
	}
	switch t := props["qom-type"]; t {
	case "secret":
		return o.addSecret(props)
	case "":
		return fmt.Errorf("Parameter 'qom-type' is missing")
	default:
		return fmt.Errorf("Parameter 'qom-type' does not accept value '%s' (ringblk supports --object secret only)", t)
	}
}

func (o *Objects) addSecret(p map[string]string) error {
	id, ok := p["id"]
	if !ok {
		return fmt.Errorf("Parameter 'id' is missing")
	}
	for k := range p {
		switch k {
		case "qom-type", "id", "data", "file", "format", "loaded":
		case "keyid", "iv":
			return fmt.Errorf("secret '%s': encrypted secrets (%s=) are not supported by ringblk", id, k)
		default:
			return fmt.Errorf("Property 'secret.%s' not found", k)
		}
	}
	data, hasData := p["data"]
	file, hasFile := p["file"]
	switch {
	case hasData && hasFile:
		return fmt.Errorf("'file' and 'data' are mutually exclusive")
	case !hasData && !hasFile:
		return fmt.Errorf("Either 'file' or 'data' must be provided")
	}
	raw := []byte(data)
	if hasFile {
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("Unable to read %s: %v", file, UnwrapPathErr(err))
		}
		raw = b
	}
	switch f := p["format"]; f {
	case "", "raw":
	case "base64":
		b, err := base64.StdEncoding.DecodeString(string(raw))
		if err != nil {
			return fmt.Errorf("Base64 data contains invalid characters")
		}
		raw = b
	default:
		return fmt.Errorf("Parameter 'format' does not accept value '%s'", f)
	}
	if o.secrets == nil {
		o.secrets = map[string][]byte{}
	}
	if _, dup := o.secrets[id]; dup {
		return fmt.Errorf("attempt to add duplicate property '%s' to object (type 'container')", id)
	}
	o.secrets[id] = raw
	return nil
}

// Secret returns the bytes of secret id, in QEMU's words when there is
// none.
func (o *Objects) Secret(id string) ([]byte, error) {
	if o != nil {
		if b, ok := o.secrets[id]; ok {
			return b, nil
		}
	}
	return nil, fmt.Errorf("No secret with id '%s'", id)
}
