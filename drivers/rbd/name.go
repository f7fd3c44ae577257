package rbd

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Spec names one RBD image and how to reach its cluster. ParseName builds
// it from QEMU's rbd: filename, FromOptions from the keys of a json:
// filename or --image-opts list with driver=rbd.
type Spec struct {
	Pool      string
	Namespace string
	Image     string
	Snap      string // "" for the image head
	Conf      string // ceph.conf path; "" reads librados' default search path
	User      string // cephx id without "client." ("" means "admin")
	Key       string // the cephx key itself (QEMU's key-secret resolves to this)
	Keyring   string // a keyring file
	// Timeout bounds every cluster operation: connecting, opening, and each
	// I/O (librados' client_mount_timeout, rados_mon_op_timeout and
	// rados_osd_op_timeout). 0 means DefaultTimeout; a negative value leaves
	// librados' own defaults (which wait for ever for an OSD).
	Timeout time.Duration
	// Cache is the cache mode the host opened the node with; it sets
	// librbd's cache before Options (which may override it). It is not
	// part of the name.
	Cache Cache
	// Options lists further librados settings (name=value, given to
	// rados_conf_set in this order).
	Options []Option
}

// Cache is a node's cache mode as it reaches librbd (QEMU's cache= for an
// rbd node, docs/design/rbd.md §"Cache mode").
type Cache uint8

const (
	// CacheConfig leaves librbd's cache to the config file and the name
	// (librbd's defaults: cache on, write-through until the first flush).
	CacheConfig Cache = iota
	// CacheWriteback (cache=writeback or unsafe): rbd_cache=true and
	// rbd_cache_writethrough_until_flush=false. A write completes once
	// librbd holds it; a flush makes it durable, as the page cache does
	// for a file. The host flushes, so librbd has no need to guess from
	// the absence of flushes that it must write through.
	CacheWriteback
	// CacheOff (cache=none, writethrough, directsync): rbd_cache=false.
	// A write completes when the OSDs acknowledged it.
	CacheOff
)

// settings returns the librados settings c stands for.
func (c Cache) settings() []Option {
	switch c {
	case CacheWriteback:
		return []Option{{"rbd_cache", "true"}, {"rbd_cache_writethrough_until_flush", "false"}}
	case CacheOff:
		return []Option{{"rbd_cache", "false"}}
	}
	return nil
}

// Option is one librados configuration setting.
type Option struct{ Key, Value string }

// confDefaults are librados settings of ours, applied when the config
// file left librados' own default (LibDefault) in place; the name's
// options override them. librados_thread_count=1: one completion thread
// (librados' io_context_pool) instead of two. A node's completions all go
// to one Context, so a second thread only adds hand-offs; with one, RBD
// 4 KiB random reads and writes took 5–13% less CPU per I/O at the same
// or better IOPS (docs/design/rbd.md §"Where the client's threads run").
var confDefaults = []struct {
	Option
	LibDefault string
}{{Option{"librados_thread_count", "1"}, "2"}}

// DefaultTimeout bounds cluster operations when a name does not set one.
const DefaultTimeout = 30 * time.Second

// Prefix starts every RBD filename.
const Prefix = "rbd:"

// IsName reports whether s names an RBD image (rbd:...).
func IsName(s string) bool { return strings.HasPrefix(s, Prefix) }

// ErrNotBuilt is returned for every RBD operation by a ringblk built
// without the rbd build tag.
var ErrNotBuilt = errors.New("built without RBD support; rebuild with -tags rbd (needs librbd-dev)")

// ParseName parses QEMU's RBD filename syntax:
//
//	rbd:pool/[namespace/]image[@snapshot][:option=value[:option=value...]]
//
// A backslash escapes the next character (so an option value may hold a
// ':' or a name an '@'). Options conf, id (or user), key, keyring and
// timeout (seconds, or a Go duration) are ours; any other is a librados
// setting (mon_host, rbd_cache, ...), applied after the config file.
func ParseName(name string) (Spec, error) {
	var s Spec
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return s, fmt.Errorf("rbd: %q does not start with %q", name, Prefix)
	}
	fields := splitEscaped(rest, ':')
	path := fields[0]
	parts := splitEscaped(path, '/')
	if len(parts) < 2 || len(parts) > 3 {
		return s, fmt.Errorf("rbd: %q: expected pool/image or pool/namespace/image", name)
	}
	s.Pool = unescape(parts[0])
	last := parts[len(parts)-1]
	if len(parts) == 3 {
		s.Namespace = unescape(parts[1])
	}
	img := splitEscaped(last, '@')
	if len(img) > 2 {
		return s, fmt.Errorf("rbd: %q: more than one '@' in the image name", name)
	}
	s.Image = unescape(img[0])
	if len(img) == 2 {
		s.Snap = unescape(img[1])
		if s.Snap == "" {
			return s, fmt.Errorf("rbd: %q: empty snapshot name after '@'", name)
		}
	}
	if s.Pool == "" || s.Image == "" {
		return s, fmt.Errorf("rbd: %q: the pool and the image must not be empty", name)
	}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return s, fmt.Errorf("rbd: %q: option %q is not name=value", name, unescape(f))
		}
		if err := s.set(unescape(k), unescape(v)); err != nil {
			return s, fmt.Errorf("rbd: %q: %w", name, err)
		}
	}
	return s, nil
}

// FromOptions builds a Spec from the keys of a json: or --image-opts
// description with driver=rbd: pool, namespace, image, snapshot, conf,
// user, key-secret (the key itself; a secret object's data), keyring,
// timeout, and "server.N.host"/"server.N.port" (mon_host). Unknown keys
// are errors: a typo must not be ignored.
func FromOptions(o map[string]string) (Spec, error) {
	var s Spec
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	servers := map[string][2]string{}
	for _, k := range keys {
		v := o[k]
		switch k {
		case "driver":
			if v != "rbd" {
				return s, fmt.Errorf("rbd: driver %q is not rbd", v)
			}
		case "pool":
			s.Pool = v
		case "namespace":
			s.Namespace = v
		case "image":
			s.Image = v
		case "snapshot":
			s.Snap = v
		case "conf":
			s.Conf = v
		case "user":
			s.User = v
		case "key-secret":
			s.Key = v
		case "keyring":
			s.Keyring = v
		case "timeout":
			if err := s.set("timeout", v); err != nil {
				return s, err
			}
		default:
			if rest, ok := strings.CutPrefix(k, "server."); ok {
				idx, field, ok := strings.Cut(rest, ".")
				if ok && (field == "host" || field == "port") {
					hp := servers[idx]
					if field == "host" {
						hp[0] = v
					} else {
						hp[1] = v
					}
					servers[idx] = hp
					continue
				}
			}
			return s, fmt.Errorf("rbd: unknown option %q", k)
		}
	}
	if len(servers) > 0 {
		idx := make([]string, 0, len(servers))
		for i := range servers {
			idx = append(idx, i)
		}
		sort.Strings(idx)
		var hosts []string
		for _, i := range idx {
			hp := servers[i]
			if hp[0] == "" {
				return s, fmt.Errorf("rbd: server.%s has no host", i)
			}
			if hp[1] != "" {
				hosts = append(hosts, hp[0]+":"+hp[1])
			} else {
				hosts = append(hosts, hp[0])
			}
		}
		s.Options = append(s.Options, Option{"mon_host", strings.Join(hosts, ",")})
	}
	if s.Pool == "" || s.Image == "" {
		return s, errors.New("rbd: the options need a pool and an image")
	}
	return s, nil
}

func (s *Spec) set(k, v string) error {
	switch k {
	case "conf":
		s.Conf = v
	case "id", "user":
		s.User = strings.TrimPrefix(v, "client.")
	case "key":
		s.Key = v
	case "keyring":
		s.Keyring = v
	case "timeout":
		d, err := time.ParseDuration(v)
		if err != nil {
			secs, err2 := strconv.ParseFloat(v, 64)
			if err2 != nil || secs < 0 {
				return fmt.Errorf("timeout %q is neither seconds nor a duration", v)
			}
			d = time.Duration(secs * float64(time.Second))
		}
		if d == 0 {
			d = -1 // librados' defaults
		}
		s.Timeout = d
	default:
		s.Options = append(s.Options, Option{k, v})
	}
	return nil
}

// String spells s as an rbd: filename that ParseName reads back. The key
// is left out (it is a secret), so a name printed by info does not leak it.
func (s Spec) String() string {
	var b strings.Builder
	b.WriteString(Prefix)
	b.WriteString(escape(s.Pool, "/@:"))
	b.WriteByte('/')
	if s.Namespace != "" {
		b.WriteString(escape(s.Namespace, "/@:"))
		b.WriteByte('/')
	}
	b.WriteString(escape(s.Image, "/@:"))
	if s.Snap != "" {
		b.WriteByte('@')
		b.WriteString(escape(s.Snap, "/@:"))
	}
	opt := func(k, v string) {
		b.WriteByte(':')
		b.WriteString(escape(k, ":="))
		b.WriteByte('=')
		b.WriteString(escape(v, ":"))
	}
	if s.Conf != "" {
		opt("conf", s.Conf)
	}
	if s.User != "" {
		opt("id", s.User)
	}
	if s.Keyring != "" {
		opt("keyring", s.Keyring)
	}
	if s.Timeout != 0 {
		if s.Timeout < 0 {
			opt("timeout", "0")
		} else {
			opt("timeout", s.Timeout.String())
		}
	}
	for _, o := range s.Options {
		opt(o.Key, o.Value)
	}
	return b.String()
}

// WithSnap returns s naming snapshot snap of the same image.
func (s Spec) WithSnap(snap string) Spec {
	s.Snap = snap
	s.Options = append([]Option(nil), s.Options...)
	return s
}

// splitEscaped splits s at unescaped sep bytes; escapes are kept.
func splitEscaped(s string, sep byte) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func escape(s, special string) string {
	if !strings.ContainsAny(s, special+`\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' || strings.IndexByte(special, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
