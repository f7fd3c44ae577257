// Package nbd is a block driver that is an NBD client: a node whose data
// lives on an NBD server (qemu-nbd, nbdkit, ringblk nbd), named by QEMU's
// URI forms nbd://host[:port]/export and nbd+unix:///export?socket=PATH.
//
// The handshake (fixed newstyle, structured replies, base:allocation, GO)
// runs with ordinary blocking socket calls in NewNode, before the node
// exists. From then on the socket belongs to the node's Context, as an NBD
// server connection does (package nbd): it is non-blocking, readiness
// comes from POLL_ADD on the Context's ring, requests go out with writev,
// and replies are parsed from reads straight into the requests' buffers.
// Up to 64 requests are in flight; more wait in order. Nothing is
// allocated per request. Requests from another Context are handed over
// through the driver's block.Inbox and completed back through their own
// Context's outbox (block.Request.CompleteRemote): lock-free, no map
// (docs/design/nbd-client.md).
package nbd

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// URI is a parsed NBD URI.
type URI struct {
	Network string // "tcp" or "unix"
	Addr    string // host:port, or the socket path
	Export  string
	Text    string // the URI as given
	// TLS (nbds schemes): the x509 files (ca-cert.pem, and client-cert.pem
	// with client-key.pem when the server verifies clients) in TLSDir, and
	// the name the server's certificate must carry (TCP: the host by
	// default; Unix: none unless tls-hostname is given, then only the CA
	// is checked).
	TLS         bool
	TLSDir      string
	TLSHostname string
}

// IsURI reports whether name is an NBD URI (rather than a file name), or
// QEMU's older pseudo-protocol form nbd:unix:PATH / nbd:HOST:PORT, with
// an optional :exportname=NAME.
func IsURI(name string) bool {
	for _, p := range []string{"nbd://", "nbd+tcp://", "nbd+unix://", "nbds://", "nbds+tcp://", "nbds+unix://", "nbd:"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// legacyExport separates the export name in QEMU's older NBD filenames.
const legacyExport = ":exportname="

// parseLegacy parses QEMU's pseudo-protocol NBD filenames, which scripts
// and qemu-iotests (058) still use: nbd:unix:PATH[:exportname=NAME] and
// nbd:HOST:PORT[:exportname=NAME] (an IPv6 host in brackets). As in QEMU,
// the export name is everything after the first ":exportname=", and a
// TCP address needs its port.
func parseLegacy(s, rest string) (URI, error) {
	out := URI{Text: s}
	if i := strings.Index(rest, legacyExport); i >= 0 {
		out.Export = rest[i+len(legacyExport):]
		rest = rest[:i]
	}
	if path, ok := strings.CutPrefix(rest, "unix:"); ok {
		if path == "" {
			return URI{}, fmt.Errorf("NBD filename %q: no socket path (nbd:unix:PATH[:exportname=NAME])", s)
		}
		out.Network, out.Addr = "unix", path
		return out, nil
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil || host == "" || port == "" {
		return URI{}, fmt.Errorf("NBD filename %q: want nbd:HOST:PORT[:exportname=NAME] or nbd:unix:PATH[:exportname=NAME]", s)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return URI{}, fmt.Errorf("NBD filename %q: bad port %q", s, port)
	}
	out.Network, out.Addr = "tcp", net.JoinHostPort(host, port)
	return out, nil
}

// ParseURI parses QEMU's NBD URI forms: nbd[+tcp]://host[:port]/export
// (port 10809 by default) and nbd+unix:///export?socket=PATH, and the
// older nbd:unix:PATH and nbd:HOST:PORT (parseLegacy); the nbds
// forms add TLS and take libnbd's query parameters tls-certificates=DIR
// (required) and tls-hostname=NAME.
func ParseURI(s string) (URI, error) {
	if rest, ok := strings.CutPrefix(s, "nbd:"); ok && !strings.HasPrefix(rest, "//") {
		return parseLegacy(s, rest)
	}
	u, err := url.Parse(s)
	if err != nil {
		return URI{}, fmt.Errorf("invalid NBD URI %q: %w", s, err)
	}
	out := URI{Text: s, Export: strings.TrimPrefix(u.Path, "/")}
	q := u.Query()
	if scheme, ok := strings.CutPrefix(u.Scheme, "nbds"); ok {
		out.TLS = true
		u.Scheme = "nbd" + scheme
		out.TLSDir, out.TLSHostname = q.Get("tls-certificates"), q.Get("tls-hostname")
		if out.TLSDir == "" {
			return URI{}, fmt.Errorf("NBD URI %q: TLS needs ?tls-certificates=DIR (ca-cert.pem, client-cert.pem, client-key.pem)", s)
		}
		q.Del("tls-certificates")
		q.Del("tls-hostname")
	}
	switch u.Scheme {
	case "nbd", "nbd+tcp":
		if len(q) != 0 {
			return URI{}, fmt.Errorf("NBD URI %q: unexpected query %q", s, u.RawQuery)
		}
		host := u.Hostname()
		if host == "" {
			return URI{}, fmt.Errorf("NBD URI %q names no host", s)
		}
		port := u.Port()
		if port == "" {
			port = "10809"
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return URI{}, fmt.Errorf("NBD URI %q: bad port %q", s, port)
		}
		out.Network, out.Addr = "tcp", net.JoinHostPort(host, port)
		if out.TLS && out.TLSHostname == "" {
			out.TLSHostname = host
		}
	case "nbd+unix":
		if u.Host != "" {
			return URI{}, fmt.Errorf("NBD URI %q: nbd+unix takes no host (nbd+unix:///export?socket=PATH)", s)
		}
		sock := q.Get("socket")
		if sock == "" || len(q) != 1 || len(q["socket"]) != 1 {
			return URI{}, fmt.Errorf("NBD URI %q: nbd+unix needs exactly one ?socket=PATH", s)
		}
		out.Network, out.Addr = "unix", sock
	default:
		return URI{}, fmt.Errorf("NBD URI %q: unknown scheme %q", s, u.Scheme)
	}
	return out, nil
}

// Canonical spells the URI as QEMU prints an NBD filename: no slash before
// an empty export name, the port always given for TCP.
func (u URI) Canonical() string {
	exp := ""
	if u.Export != "" {
		exp = "/" + u.Export
	}
	scheme := "nbd"
	if u.TLS {
		scheme = "nbds"
	}
	if u.Network == "unix" {
		return scheme + "+unix://" + exp + "?socket=" + u.Addr
	}
	return scheme + "://" + u.Addr + exp
}

// Filename is the node's filename as QEMU shows an NBD node's
// (query-named-block-nodes' "file"): the canonical URI.
func (d *Driver) Filename() string { return d.uri.Canonical() }
