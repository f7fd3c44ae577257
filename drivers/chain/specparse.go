package chain

// The two spellings of a block options dictionary that QEMU's tools take
// on their command lines: a key=value list ("driver=qcow2,file.filename=x",
// QemuOpts syntax: ",," is a comma inside a value) and a "json:{...}"
// filename (QEMU's JSON dialect: strings in single or double quotes).
// Both become a flat Spec with dotted keys, as QEMU flattens its option
// dictionaries.

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Spec is a flattened block options dictionary: "driver",
// "file.filename", "backing", "inject-error.0.event"… A JSON null is the
// value Null; booleans are "on" and "off"; numbers their decimal text.
type Spec map[string]string

// Null is the value of a key given as JSON null ("backing": null).
const Null = "\x00null"

// maxSpecDepth bounds the nesting of a json: filename.
const maxSpecDepth = 32

// ParseKeyValues reads a QemuOpts list ("a=1,b.c=x,,y"). An item without
// "=" is implied's value when it comes first and implied is not ""
// (qemu-io --image-opts reads "path" as file=path), otherwise the flag
// "on". Later values of a key replace earlier ones.
func ParseKeyValues(list, implied string, into Spec) error {
	first := true
	for i := 0; i < len(list); {
		// One item: up to a single comma (",," is an escaped comma).
		var b strings.Builder
		j := i
		for ; j < len(list); j++ {
			if list[j] == ',' {
				if j+1 < len(list) && list[j+1] == ',' {
					b.WriteByte(',')
					j++
					continue
				}
				break
			}
			b.WriteByte(list[j])
		}
		item := b.String()
		i = j + 1
		k, v, ok := strings.Cut(item, "=")
		switch {
		case item == "":
			return fmt.Errorf("Invalid parameter ''")
		case !ok && first && implied != "":
			into[implied] = item
		case !ok:
			into[item] = "on"
		case k == "":
			return fmt.Errorf("Invalid parameter ''")
		default:
			into[k] = v
		}
		first = false
	}
	return nil
}

// IsJSONFilename reports whether name is a "json:" pseudo-filename.
func IsJSONFilename(name string) bool { return strings.HasPrefix(name, "json:") }

// ParseJSONFilename reads a "json:{...}" filename into a Spec.
func ParseJSONFilename(name string) (Spec, error) {
	rest, ok := strings.CutPrefix(name, "json:")
	if !ok {
		return nil, fmt.Errorf("not a json: filename")
	}
	p := &jsonParser{s: rest}
	v, err := p.value(0)
	if err == nil {
		p.space()
		if p.i != len(p.s) {
			err = p.errorf("unexpected text after the object")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("Could not parse the JSON options: %v", err)
	}
	obj, ok := v.(jsonObject)
	if !ok {
		return nil, fmt.Errorf("Could not parse the JSON options: not a JSON object")
	}
	out := Spec{}
	flatten("", obj, out)
	return out, nil
}

type jsonObject []jsonMember // members in order

type jsonMember struct {
	key string
	val any // string, jsonObject, []any, nil (null)
}

func flatten(prefix string, v any, out Spec) {
	switch v := v.(type) {
	case jsonObject:
		for _, m := range v {
			flatten(prefix+m.key+".", m.val, out)
		}
	case []any:
		for i, e := range v {
			flatten(prefix+strconv.Itoa(i)+".", e, out)
		}
	case nil:
		out[strings.TrimSuffix(prefix, ".")] = Null
	case string:
		out[strings.TrimSuffix(prefix, ".")] = v
	}
}

// jsonParser is a small recursive-descent reader of QEMU's JSON dialect.
type jsonParser struct {
	s string
	i int
}

func (p *jsonParser) errorf(format string, a ...any) error {
	return fmt.Errorf("at offset %d: %s", p.i, fmt.Sprintf(format, a...))
}

func (p *jsonParser) space() {
	for p.i < len(p.s) && strings.IndexByte(" \t\r\n", p.s[p.i]) >= 0 {
		p.i++
	}
}

func (p *jsonParser) value(depth int) (any, error) {
	if depth > maxSpecDepth {
		return nil, p.errorf("nested too deeply")
	}
	p.space()
	if p.i >= len(p.s) {
		return nil, p.errorf("unexpected end of input")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		p.i++
		var obj jsonObject
		p.space()
		if p.i < len(p.s) && p.s[p.i] == '}' {
			p.i++
			return obj, nil
		}
		for {
			p.space()
			if p.i >= len(p.s) || (p.s[p.i] != '"' && p.s[p.i] != '\'') {
				return nil, p.errorf("expected a quoted key")
			}
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			p.space()
			if p.i >= len(p.s) || p.s[p.i] != ':' {
				return nil, p.errorf("expected ':'")
			}
			p.i++
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			obj = append(obj, jsonMember{k, v})
			p.space()
			if p.i < len(p.s) && p.s[p.i] == ',' {
				p.i++
				continue
			}
			if p.i < len(p.s) && p.s[p.i] == '}' {
				p.i++
				return obj, nil
			}
			return nil, p.errorf("expected ',' or '}'")
		}
	case c == '[':
		p.i++
		arr := []any{}
		p.space()
		if p.i < len(p.s) && p.s[p.i] == ']' {
			p.i++
			return arr, nil
		}
		for {
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
			p.space()
			if p.i < len(p.s) && p.s[p.i] == ',' {
				p.i++
				continue
			}
			if p.i < len(p.s) && p.s[p.i] == ']' {
				p.i++
				return arr, nil
			}
			return nil, p.errorf("expected ',' or ']'")
		}
	case c == '"' || c == '\'':
		return p.str()
	case c == '-' || c >= '0' && c <= '9':
		j := p.i
		for j < len(p.s) && strings.IndexByte("+-.eE0123456789", p.s[j]) >= 0 {
			j++
		}
		num := p.s[p.i:j]
		if _, err := strconv.ParseFloat(num, 64); err != nil {
			return nil, p.errorf("bad number '%s'", num)
		}
		p.i = j
		return num, nil
	default:
		for _, w := range []struct{ word, val string }{{"true", "on"}, {"false", "off"}} {
			if strings.HasPrefix(p.s[p.i:], w.word) {
				p.i += len(w.word)
				return w.val, nil
			}
		}
		if strings.HasPrefix(p.s[p.i:], "null") {
			p.i += 4
			return nil, nil
		}
		return nil, p.errorf("unexpected character '%c'", c)
	}
}

// str reads a string in single or double quotes, with JSON's escapes
// (and \' inside single quotes).
func (p *jsonParser) str() (string, error) {
	q := p.s[p.i]
	p.i++
	var b strings.Builder
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == q:
			p.i++
			return b.String(), nil
		case c == '\\':
			if p.i+1 >= len(p.s) {
				return "", p.errorf("unterminated escape")
			}
			e := p.s[p.i+1]
			p.i += 2
			switch e {
			case '"', '\'', '\\', '/':
				b.WriteByte(e)
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case 'u':
				if p.i+4 > len(p.s) {
					return "", p.errorf("short \\u escape")
				}
				n, err := strconv.ParseUint(p.s[p.i:p.i+4], 16, 32)
				if err != nil {
					return "", p.errorf("bad \\u escape")
				}
				p.i += 4
				b.WriteRune(rune(n))
			default:
				return "", p.errorf("bad escape '\\%c'", e)
			}
		case c < 0x20:
			return "", p.errorf("control character in a string")
		default:
			r, n := utf8.DecodeRuneInString(p.s[p.i:])
			b.WriteRune(r)
			p.i += n
		}
	}
	return "", p.errorf("unterminated string")
}

// Sub returns the keys under prefix ("file" gives "file.filename" as
// "filename"); has says whether any key lies there.
func (s Spec) Sub(prefix string) (sub Spec, has bool) {
	sub = Spec{}
	for k, v := range s {
		if rest, ok := strings.CutPrefix(k, prefix+"."); ok {
			sub[rest] = v
			has = true
		}
	}
	return sub, has
}
