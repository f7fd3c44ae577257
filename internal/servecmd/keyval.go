package servecmd

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// keyval parses QEMU's command-line option syntax: "a=1,b.c=x,,y" (",,"
// is a literal comma, dotted keys nest). A first element without "=" is
// the value of implied (e.g. --object iothread,id=x: implied "qom-type").
// An argument that starts with "{" is JSON instead.
func keyval(s, implied string) (map[string]any, error) {
	if strings.HasPrefix(strings.TrimSpace(s), "{") {
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			return nil, fmt.Errorf("invalid JSON: %v", err)
		}
		return m, nil
	}
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	parts = append(parts, cur.String())
	out := map[string]any{}
	for i, p := range parts {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			if i == 0 && implied != "" && p != "" {
				k, v = implied, p
			} else {
				return nil, fmt.Errorf("expected key=value, got '%s'", p)
			}
		}
		if k == "" {
			return nil, fmt.Errorf("empty key in '%s'", p)
		}
		keys := strings.Split(k, ".")
		m := out
		for _, sub := range keys[:len(keys)-1] {
			next, ok := m[sub].(map[string]any)
			if !ok {
				if _, clash := m[sub]; clash {
					return nil, fmt.Errorf("parameter '%s' is both a value and a group", sub)
				}
				next = map[string]any{}
				m[sub] = next
			}
			m = next
		}
		last := keys[len(keys)-1]
		if _, dup := m[last]; dup {
			return nil, fmt.Errorf("parameter '%s' given twice", k)
		}
		m[last] = v
	}
	return crumple(out).(map[string]any), nil
}

// crumple turns every group whose keys are exactly 0, 1, ... n-1 into a
// list, as QEMU's keyval parser does ("inject-error.0.event=read_aio":
// a list of one object); a group that mixes indexes and names, or skips
// an index, stays an object (the decoder then names what is wrong).
func crumple(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	for k, x := range m {
		m[k] = crumple(x)
	}
	if len(m) == 0 {
		return m
	}
	list := make([]any, len(m))
	for k, x := range m {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= len(m) || strconv.Itoa(i) != k {
			return m
		}
		list[i] = x
	}
	return list
}

// coerce turns keyval's strings into the JSON types the fields of t want
// (booleans as on/off/true/false/yes/no, integers), so one decoder takes
// both syntaxes. Values already typed (from JSON) stay as they are.
func coerce(m map[string]any, t reflect.Type) (map[string]any, error) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return m, nil
	}
	fields := map[string]reflect.Type{}
	var collect func(t reflect.Type)
	collect = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				collect(f.Type) // a QAPI base type: its members are ours
				continue
			}
			name := strings.Split(f.Tag.Get("json"), ",")[0]
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
	}
	collect(t)
	for k, v := range m {
		ft, ok := fields[k]
		if !ok {
			continue // the decoder reports the unknown member
		}
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch x := v.(type) {
		case string:
			switch ft.Kind() {
			case reflect.Bool:
				switch x {
				case "on", "true", "yes":
					m[k] = true
				case "off", "false", "no":
					m[k] = false
				default:
					return nil, fmt.Errorf("parameter '%s' expects 'on' or 'off'", k)
				}
			case reflect.Int, reflect.Int64, reflect.Int32:
				n, err := parseSize(x)
				if err != nil {
					return nil, fmt.Errorf("parameter '%s' expects a number: %v", k, err)
				}
				m[k] = n
			case reflect.Float64:
				f, err := strconv.ParseFloat(x, 64)
				if err != nil {
					return nil, fmt.Errorf("parameter '%s' expects a number", k)
				}
				m[k] = f
			}
		case map[string]any:
			sub, err := coerce(x, ft)
			if err != nil {
				return nil, err
			}
			m[k] = sub
		case []any:
			if ft.Kind() != reflect.Slice {
				continue
			}
			for i, e := range x {
				if em, ok := e.(map[string]any); ok {
					sub, err := coerce(em, ft.Elem())
					if err != nil {
						return nil, err
					}
					x[i] = sub
				}
			}
		}
	}
	return m, nil
}

// parseSize accepts a plain integer or one with a k/M/G/T suffix.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseInt(s, 0, 64)
	if err != nil {
		return 0, err
	}
	return v * mult, nil
}
