package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// Handler runs one command. args is the decoded argument struct (a
// pointer to the type given to Register) or nil for commands without
// arguments. The result is marshalled as "return" (nil: {}).
type Handler func(c *Client, args any) (any, error)

type command struct {
	name    string
	argType reflect.Type // struct type, or nil
	fn      Handler
	params  []param
}

type param struct {
	name     string
	field    []int // index path (fields of embedded structs are flattened)
	optional bool
}

// Registry maps command names to handlers.
type Registry struct {
	cmds map[string]*command
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{cmds: map[string]*command{}} }

// Register adds a command. args is a zero value of the argument struct
// (or nil): its exported fields carry `json:"name"` tags, and fields
// tagged `qmp:"optional"` may be left out; every other field is required.
// Unknown members are refused, as QEMU does.
func (r *Registry) Register(name string, args any, fn Handler) {
	c := &command{name: name, fn: fn}
	if args != nil {
		t := reflect.TypeOf(args)
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			panic("qmp: arguments of " + name + " must be a struct")
		}
		c.argType = t
		c.params = params(t, nil)
	}
	r.cmds[name] = c
}

// params lists the JSON members of struct t; an embedded struct's
// members count as t's own (QAPI's base types, e.g. common job options).
func params(t reflect.Type, path []int) []param {
	var out []param
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		idx := append(append([]int(nil), path...), i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			out = append(out, params(f.Type, idx)...)
			continue
		}
		tag := strings.Split(f.Tag.Get("json"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		out = append(out, param{name: tag, field: idx, optional: f.Tag.Get("qmp") == "optional"})
	}
	return out
}

// Names lists the registered commands, sorted.
func (r *Registry) Names() []string {
	out := make([]string, 0, len(r.cmds))
	for n := range r.cmds {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (r *Registry) lookup(name string) *command { return r.cmds[name] }

// decode checks raw (a JSON object or nil) against the command's
// parameters and decodes it: QEMU's messages for a missing, unexpected or
// mistyped member.
func (c *command) decode(raw json.RawMessage) (any, *Error) { return c.decodeAt("", raw) }

// decodeAt is decode for arguments nested in another command's (a
// transaction's actions): prefix names their place, as QEMU's messages do
// ("actions[0].data.").
func (c *command) decodeAt(prefix string, raw json.RawMessage) (any, *Error) {
	var members map[string]json.RawMessage
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &members); err != nil {
			return nil, Errorf("QMP input member 'arguments' must be an object")
		}
	}
	if c.argType == nil {
		for k := range members {
			return nil, Errorf("Parameter '%s%s' is unexpected", prefix, k)
		}
		return nil, nil
	}
	known := map[string]bool{}
	for _, p := range c.params {
		known[p.name] = true
		if _, ok := members[p.name]; !ok && !p.optional {
			return nil, Errorf("Parameter '%s%s' is missing", prefix, p.name)
		}
	}
	keys := make([]string, 0, len(members))
	for k := range members {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !known[k] {
			return nil, Errorf("Parameter '%s%s' is unexpected", prefix, k)
		}
	}
	v := reflect.New(c.argType)
	for _, p := range c.params {
		m, ok := members[p.name]
		if !ok {
			continue
		}
		f := v.Elem().FieldByIndex(p.field)
		if bytes.Equal(bytes.TrimSpace(m), []byte("null")) {
			if err := decodeNull(f); err != nil {
				return nil, typeError(prefix+p.name, f.Type(), err)
			}
			continue
		}
		if err := strictUnmarshal(m, f.Addr().Interface()); err != nil {
			return nil, typeError(prefix+p.name, f.Type(), err)
		}
	}
	return v.Interface(), nil
}

// decodeNull stores a JSON null in field f. Only a type with an
// UnmarshalJSON of its own can take one (QAPI's alternates with null,
// StrOrNull): encoding/json would set a pointer to nil, and leave any
// other field at its zero value, without a word, so that "backing": null
// looked absent and "node-name": null read as "". QEMU refuses a null for
// every other type.
func decodeNull(f reflect.Value) error {
	t := f.Type()
	target := f.Addr()
	if t.Kind() == reflect.Pointer {
		target = reflect.New(t.Elem())
	}
	u, ok := target.Interface().(json.Unmarshaler)
	if !ok {
		return &json.UnmarshalTypeError{Value: "null", Type: t}
	}
	if err := u.UnmarshalJSON([]byte("null")); err != nil {
		return err
	}
	if t.Kind() == reflect.Pointer {
		f.Set(target)
	}
	return nil
}

// strictUnmarshal decodes m into dst refusing unknown members (nested
// structs are QAPI structs too). Members must match a json tag exactly:
// encoding/json alone also takes a member whose name differs in case
// ("FILENAME" for "filename", or both, the last winning) or that names an
// untagged field, where QEMU refuses the member as unexpected.
func strictUnmarshal(m json.RawMessage, dst any) error {
	if err := checkMembers(m, reflect.TypeOf(dst), ""); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(m))
	dec.DisallowUnknownFields()
	return dec.Decode(dst)
}

// unexpectedMember is a member no json tag names; path is its place
// under the parameter being decoded ("cache.direkt").
type unexpectedMember struct{ path string }

func (e *unexpectedMember) Error() string { return "unexpected member '" + e.path + "'" }

var unmarshalerType = reflect.TypeOf((*json.Unmarshaler)(nil)).Elem()

// checkMembers walks raw against type t and returns an *unexpectedMember
// for the first object member that no field's tag names exactly. Types
// with their own UnmarshalJSON check themselves; anything that is not an
// object where t wants one is left to the decoder's type error.
func checkMembers(raw json.RawMessage, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		if reflect.PointerTo(t.Elem()).Implements(unmarshalerType) {
			return nil
		}
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		var elems []json.RawMessage
		if json.Unmarshal(raw, &elems) != nil {
			return nil
		}
		for _, e := range elems {
			if err := checkMembers(e, t.Elem(), path); err != nil {
				return err
			}
		}
	case reflect.Struct:
		var members map[string]json.RawMessage
		if json.Unmarshal(raw, &members) != nil {
			return nil
		}
		fields := map[string]reflect.Type{}
		for _, p := range params(t, nil) {
			fields[p.name] = t.FieldByIndex(p.field).Type
		}
		keys := make([]string, 0, len(members))
		for k := range members {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				return &unexpectedMember{path + k}
			}
			if err := checkMembers(members[k], ft, path+k+"."); err != nil {
				return err
			}
		}
	}
	return nil
}

func typeError(name string, t reflect.Type, err error) *Error {
	var um *unexpectedMember
	if errors.As(err, &um) {
		return Errorf("Parameter '%s.%s' is unexpected", name, um.path)
	}
	var ute *json.UnmarshalTypeError
	if errors.As(err, &ute) && strings.HasPrefix(ute.Value, "number") {
		// A number out of a fixed-width field's range: QEMU's visitor
		// names the C type.
		if c := cIntType(ute.Type); c != "" {
			if ute.Field != "" {
				name += "." + ute.Field
			}
			return Errorf("Parameter '%s' expects %s", name, c)
		}
	}
	if errors.As(err, &ute) && ute.Field != "" {
		return Errorf("Invalid parameter type for '%s.%s', expected: %s", name, ute.Field, qapiType(ute.Type))
	}
	if errors.As(err, &ute) {
		return Errorf("Invalid parameter type for '%s', expected: %s", name, qapiType(t))
	}
	var qe *Error
	if errors.As(err, &qe) {
		return qe
	}
	return Errorf("Invalid parameter '%s': %v", name, strings.TrimPrefix(err.Error(), "json: "))
}

// cIntType is the C type QEMU's messages name for a fixed-width integer
// field ("" for other types).
func cIntType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Uint8:
		return "uint8_t"
	case reflect.Uint16:
		return "uint16_t"
	case reflect.Uint32:
		return "uint32_t"
	case reflect.Int8:
		return "int8_t"
	case reflect.Int16:
		return "int16_t"
	case reflect.Int32:
		return "int32_t"
	}
	return ""
}

// qapiType names a Go type the way QEMU's messages name QAPI types.
func qapiType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint64, reflect.Uint32, reflect.Uint, reflect.Float64:
		return "integer"
	case reflect.Slice:
		return "array"
	case reflect.Struct, reflect.Map:
		return "object"
	}
	return fmt.Sprint(t)
}

// ArgType returns the argument struct type of a command (nil: none or
// unknown), for callers that build arguments from another syntax.
func (r *Registry) ArgType(name string) reflect.Type {
	if c := r.cmds[name]; c != nil {
		return c.argType
	}
	return nil
}
