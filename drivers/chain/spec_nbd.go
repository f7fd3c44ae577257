package chain

// nbd in option trees: QEMU's BlockdevOptionsNbd (driver=nbd,
// server.type=unix|inet with server.path or server.host and
// server.port, export, open-timeout, and what ringblk's client cannot do
// refused by name).

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/nbd"
)

func init() { SpecDrivers["nbd"] = specNBD }

// maxOpenTimeout is QAPI's uint32 range of open-timeout, in seconds.
const maxOpenTimeout = 1<<32 - 1

// NBDURI is the URI of the NBD export a driver=nbd tree names.
func NBDURI(s Spec) (string, error) {
	exp := s["export"]
	if exp == Null {
		exp = ""
	}
	path := ""
	if exp != "" {
		path = "/" + url.PathEscape(exp)
	}
	typ, ok := s["server.type"]
	if !ok {
		if _, any := s.Sub("server"); !any {
			return "", fmt.Errorf("Parameter 'server' is missing")
		}
		return "", fmt.Errorf("Parameter 'server.type' is missing")
	}
	switch typ {
	case "unix":
		p := s["server.path"]
		if p == "" {
			p = s["server.data.path"] // SocketAddressLegacy
		}
		if p == "" {
			return "", fmt.Errorf("Parameter 'server.path' is missing")
		}
		return "nbd+unix://" + path + "?socket=" + queryEscaper.Replace(p), nil
	case "inet":
		host, port := s["server.host"], s["server.port"]
		if host == "" {
			host = s["server.data.host"]
		}
		if port == "" {
			port = s["server.data.port"]
		}
		if host == "" {
			return "", fmt.Errorf("Parameter 'server.host' is missing")
		}
		if port == "" {
			return "", fmt.Errorf("Parameter 'server.port' is missing")
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return "", fmt.Errorf("Parameter 'server.port': '%s' is not a port number (a service name is not supported)", port)
		}
		return "nbd://" + net.JoinHostPort(host, port) + path, nil
	case "fd", "vsock":
		return "", fmt.Errorf("NBD server address type '%s' is not supported (unix, inet)", typ)
	}
	return "", fmt.Errorf("Parameter 'server.type' does not accept value '%s'", typ)
}

// queryEscaper escapes what would end or change a socket path in a URI's
// query, and nothing else, so that the path reads as given in messages.
var queryEscaper = strings.NewReplacer("%", "%25", "&", "%26", "#", "%23", "+", "%2B", " ", "%20", ";", "%3B")

func specNBD(b *SpecBuilder, s Spec, prefix, name string) (*block.Node, error) {
	// A filename is an NBD URI or QEMU's older nbd:unix:PATH /
	// nbd:HOST:PORT form (qemu-io -f raw nbd:unix:SOCK, qemu-iotests 058),
	// given instead of the server and export options, as in QEMU.
	fromName := ""
	if fn, ok := s["filename"]; ok && fn != Null {
		if !nbd.IsURI(fn) {
			return nil, fmt.Errorf("nbd: give the server and export as options, not a filename (or open the URI '%s' by name)", fn)
		}
		if _, srv := s.Sub("server"); srv || s["export"] != "" {
			return nil, fmt.Errorf("host/port/path and a file name may not be specified at the same time")
		}
		if _, err := nbd.ParseURI(fn); err != nil {
			return nil, err
		}
		fromName = fn
	}
	delete(s, "filename")
	if id, ok := s["tls-creds"]; ok && id != Null && id != "" {
		// ringblk's client takes TLS from nbds:// URIs only; no
		// --object tls-creds-x509 exists to name.
		return nil, fmt.Errorf("No TLS credentials with id '%s'", id)
	}
	if v, ok := s["reconnect-delay"]; ok && v != "0" {
		return nil, fmt.Errorf("nbd: reconnect-delay %s is not supported: ringblk's NBD client does not reconnect (0 only)", v)
	}
	uri := fromName
	if uri == "" {
		var err error
		if uri, err = NBDURI(s); err != nil {
			return nil, err
		}
	}
	var o nbd.Options
	if v, ok := s["x-dirty-bitmap"]; ok && v != Null {
		o.MetaContext = v
	}
	if v, ok := s["open-timeout"]; ok {
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil || secs > maxOpenTimeout {
			return nil, fmt.Errorf("Parameter 'open-timeout' expects uint32_t")
		}
		o.OpenTimeout = time.Duration(secs) * time.Second
	}
	auto, _, err := s.Bool("auto-read-only")
	if err != nil {
		return nil, err
	}
	o.AutoReadOnly = auto || b.O.AutoReadOnly
	o.ReadOnly = b.O.ReadOnly
	for k := range s {
		switch k {
		case "server.type", "server.path", "server.host", "server.port", "server.data.path", "server.data.host", "server.data.port",
			"export", "tls-creds", "tls-hostname", "x-dirty-bitmap", "reconnect-delay", "open-timeout", "auto-read-only":
			delete(s, k)
		}
	}
	if err := leftover(s, "protocol", "nbd"); err != nil {
		return nil, err
	}
	if b.Path == "" {
		b.Path = uri
	}
	return nbd.Open(b.G, uri, o, block.Options{Name: name, ReadOnly: o.ReadOnly})
}
