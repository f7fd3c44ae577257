package qmp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"unicode/utf8"
)

// The monitor prints its messages as QEMU's does, byte for byte where the
// values are the same: members of an object in the order of QEMU's QDict
// (a hash table of 512 buckets walked in bucket order, the newest entry
// of a bucket first), ", " and ": " between items, strings escaped as
// QEMU's JSON writer escapes them (control characters and everything
// outside printable ASCII as \uXXXX, upper-case hex). A QMP client
// parses JSON and sees no difference; a test that compares the text of a
// session, as qemu-iotests do (qsd-jobs: `{"return": {}}`,
// `{"timestamp": …, "event": …, "data": {"status": …, "id": …}}`), sees
// the same lines from both daemons. Go's encoding/json alone prints the
// members of a map sorted and those of a struct in field order, without
// spaces.

// qdictBuckets is the size of QEMU's QDict hash table.
const qdictBuckets = 512

// qdictBucket is the bucket QEMU's QDict puts key in: the TDB hash QEMU
// uses for it (32-bit arithmetic), modulo the table size.
func qdictBucket(key string) uint32 {
	v := uint32(0x238F13AF) * uint32(len(key))
	for i := 0; i < len(key); i++ {
		v += uint32(key[i]) << (uint(i) * 5 % 24)
	}
	return (1103515243*v + 12345) % qdictBuckets
}

// marshalQEMU encodes v (anything encoding/json takes) as QEMU's monitor
// prints it. The members of a struct are taken to be inserted in field
// order (QAPI's order), which decides the order of two members that share
// a bucket.
func marshalQEMU(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var out bytes.Buffer
	if err := writeQEMU(&out, dec); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// writeQEMU copies one JSON value from dec to out in QEMU's form.
func writeQEMU(out *bytes.Buffer, dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '[':
			out.WriteByte('[')
			for i := 0; dec.More(); i++ {
				if i > 0 {
					out.WriteString(", ")
				}
				if err := writeQEMU(out, dec); err != nil {
					return err
				}
			}
			out.WriteByte(']')
		case '{':
			type member struct {
				key    string
				bucket uint32
				seq    int
				val    []byte
			}
			var ms []member
			for i := 0; dec.More(); i++ {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				key, ok := kt.(string)
				if !ok {
					return fmt.Errorf("qmp: object key %v is not a string", kt)
				}
				var vb bytes.Buffer
				if err := writeQEMU(&vb, dec); err != nil {
					return err
				}
				ms = append(ms, member{key: key, bucket: qdictBucket(key), seq: i, val: vb.Bytes()})
			}
			sort.Slice(ms, func(i, j int) bool {
				if ms[i].bucket != ms[j].bucket {
					return ms[i].bucket < ms[j].bucket
				}
				return ms[i].seq > ms[j].seq // newest first within a bucket
			})
			out.WriteByte('{')
			for i, m := range ms {
				if i > 0 {
					out.WriteString(", ")
				}
				writeQEMUString(out, m.key)
				out.WriteString(": ")
				out.Write(m.val)
			}
			out.WriteByte('}')
		default:
			return fmt.Errorf("qmp: unexpected %v", t)
		}
		// The closing delimiter.
		if _, err := dec.Token(); err != nil {
			return err
		}
	case string:
		writeQEMUString(out, t)
	case json.Number:
		out.WriteString(t.String())
	case bool:
		out.WriteString(strconv.FormatBool(t))
	case nil:
		out.WriteString("null")
	default:
		return fmt.Errorf("qmp: unexpected token %T", tok)
	}
	return nil
}

// writeQEMUString writes s quoted as QEMU's JSON writer quotes strings.
func writeQEMUString(out *bytes.Buffer, s string) {
	out.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			out.WriteString(`\"`)
		case '\\':
			out.WriteString(`\\`)
		case '\b':
			out.WriteString(`\b`)
		case '\f':
			out.WriteString(`\f`)
		case '\n':
			out.WriteString(`\n`)
		case '\r':
			out.WriteString(`\r`)
		case '\t':
			out.WriteString(`\t`)
		default:
			switch {
			case r >= 0x20 && r < 0x7F:
				out.WriteRune(r)
			case r > 0xFFFF:
				r -= 0x10000
				fmt.Fprintf(out, `\u%04X\u%04X`, 0xD800|(r>>10), 0xDC00|(r&0x3FF))
			default:
				if r == utf8.RuneError {
					r = 0xFFFD
				}
				fmt.Fprintf(out, `\u%04X`, r)
			}
		}
	}
	out.WriteByte('"')
}
