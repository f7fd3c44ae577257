// Package nbdcmd is "ringblk nbd": serve an image over NBD, with
// qemu-nbd's options and exit status (0 after a clean shutdown, 1 for any
// error). The image is one node of a graph on an io_uring main Context;
// the export is a block front end (package nbd).
package nbdcmd

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	nbdc "github.com/ringblk/ringblk/drivers/nbd"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/drivers/rbd"
	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/nbd"
)

const nbdHelp = `usage: ringblk nbd [OPTIONS] FILE

Serve FILE (raw or qcow2, with its backing chain) over the NBD protocol,
the way qemu-nbd does: fixed newstyle handshake, structured replies with
sparse reads, base:allocation (and qemu:allocation-depth with -A) block
status, many requests in flight per connection.

  -p, --port=PORT          TCP port to listen on (default 10809)
  -b, --bind=IFACE         address to listen on (default 0.0.0.0)
  -k, --socket=PATH        listen on a Unix socket instead of TCP
  -e, --shared=NUM         serve up to NUM clients at once (default 1; 0: no limit)
  -t, --persistent         keep serving after the last client leaves
  -x, --export-name=NAME   the export's name (default "")
  -D, --description=TEXT   the export's description
  -r, --read-only          export read-only
  -s, --snapshot           writes go to a temporary qcow2 overlay in $TMPDIR
                           (default /var/tmp), removed at exit; FILE is only read
  -l, --load-snapshot=SNAP export internal snapshot SNAP of a qcow2 image
                           (ID or name, or snapshot.id=ID,snapshot.name=NAME),
                           read-only
  -f, --format=FORMAT      raw or qcow2 (default: probe FILE)
      --image-opts         FILE is an option string, as QEMU's
                           (driver=qcow2,file.driver=file,file.filename=PATH)
  -n, --nocache            same as --cache=none
      --cache=MODE         writeback (default), writethrough or none
      --aio=MODE           threads, native or io_uring: accepted; ringblk
                           always submits through io_uring
      --discard=MODE       ignore (default, also off) or unmap (also on)
      --detect-zeroes=MODE off (default), on or unmap (needs --discard=unmap)
  -A, --allocation-depth   offer the qemu:allocation-depth meta context
  -B, --bitmap=NAME        offer persistent bitmap NAME of a qcow2 image as the
                           qemu:dirty-bitmap:NAME meta context (repeatable); a
                           bitmap left in use by a crash is refused
      --object tls-creds-x509,id=ID,dir=DIR,endpoint=server[,verify-peer=on|off]
                           x509 credentials as QEMU lays them out in DIR:
                           ca-cert.pem, server-cert.pem, server-key.pem;
                           verify-peer (default on) requires client
                           certificates signed by that CA
      --tls-creds=ID       require TLS (NBD_OPT_STARTTLS) with object ID
      --fork               return once the server listens; serve in the background
      --pid-file=PATH      write the server's process id to PATH
  -L, --list               list the exports of the server at -k PATH (or -b
                           HOST -p PORT) with their size, flags, block sizes
                           and metadata contexts, as qemu-nbd --list does
  -v, --verbose            log refused clients and broken connections
  -V, --version            print the version
  -h, --help               this help

Not supported (refused with a message): -c/--connect
and -d/--disconnect (kernel /dev/nbd), -o/--offset,
--tls-authz, --tls-hostname, other --object types.
Exit status: 0 after a clean shutdown (SIGTERM, SIGINT, or the last
client leaving without -t), 1 on any error.
`

var nbdSpec = cli.OptSpec{
	Short: map[byte]bool{'p': true, 'b': true, 'k': true, 'e': true, 't': false, 'x': true, 'D': true, 'r': false,
		'f': true, 'n': false, 'A': false, 'v': false, 'V': false, 'h': false, 'B': true, 'c': true, 'd': true,
		'l': true, 's': false, 'o': true, 'T': true, 'L': false},
	Long: map[string]bool{"port": true, "bind": true, "socket": true, "shared": true, "persistent": false,
		"export-name": true, "description": true, "read-only": false, "format": true, "nocache": false,
		"cache": true, "aio": true, "discard": true, "detect-zeroes": true, "allocation-depth": false,
		"fork": false, "pid-file": true, "verbose": false, "version": false, "help": false, "bitmap": true,
		"connect": true, "disconnect": true, "load-snapshot": true, "snapshot": false, "offset": true,
		"object": true, "tls-creds": true, "tls-authz": true, "tls-hostname": true, "image-opts": false, "trace": true,
		"list": false},
}

// nbdConfig is the parsed command line.
type nbdConfig struct {
	port, bind, socket string
	shared             int
	persistent         bool
	name, desc         string
	readOnly           bool
	format             string
	co                 chain.Options
	depth              bool
	fork               bool
	pidFile            string
	verbose            bool
	file               string
	objects            map[string]tlsObject
	tlsCreds           string
	tls                *tlsObject       // the credentials --tls-creds names
	bitmaps            []string         // -B: persistent bitmaps to export
	snapshot           *cli.SnapshotRef // -l: export this internal snapshot (read-only)
	list               bool             // -L: list a server's exports, serve nothing
	tempSnapshot       bool             // -s: writes go to a temporary overlay
	imageOpts          bool             // --image-opts: FILE is an option string
}

// tlsObject is a tls-creds-x509 --object.
type tlsObject struct {
	dir        string
	verifyPeer bool
}

// parseObject parses a --object definition; only tls-creds-x509 objects
// for the server endpoint exist here.
func parseObject(def string) (string, tlsObject, error) {
	parts := strings.Split(def, ",")
	typ := parts[0]
	if strings.Contains(typ, "=") {
		if t, ok := strings.CutPrefix(typ, "qom-type="); ok {
			typ = t
		} else {
			return "", tlsObject{}, cli.Usagef("--object %s: the object type comes first", def)
		}
	}
	if typ != "tls-creds-x509" {
		return "", tlsObject{}, cli.Usagef("--object %s: ringblk nbd supports only tls-creds-x509 objects", typ)
	}
	o := tlsObject{verifyPeer: true}
	var id, endpoint string
	for _, kv := range parts[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return "", tlsObject{}, cli.Usagef("--object %s: expected key=value, got '%s'", typ, kv)
		}
		switch k {
		case "id":
			id = v
		case "dir":
			o.dir = v
		case "endpoint":
			endpoint = v
		case "verify-peer":
			switch v {
			case "on", "yes", "true":
				o.verifyPeer = true
			case "off", "no", "false":
				o.verifyPeer = false
			default:
				return "", tlsObject{}, cli.Usagef("--object %s: verify-peer takes on or off, not '%s'", typ, v)
			}
		default:
			return "", tlsObject{}, cli.Usagef("--object %s: property '%s' is not supported", typ, k)
		}
	}
	switch {
	case id == "":
		return "", tlsObject{}, cli.Usagef("--object %s: Parameter 'id' is missing", typ)
	case o.dir == "":
		return "", tlsObject{}, cli.Usagef("--object %s,id=%s: a credentials directory (dir=) is required", typ, id)
	case endpoint != "server":
		return "", tlsObject{}, cli.Usagef("--object %s,id=%s: Expecting TLS credentials with a server endpoint (endpoint=server)", typ, id)
	}
	return id, o, nil
}

// Main is "ringblk nbd" (qemu-nbd): args are what follows the command name;
// it returns when the server stops, with the exit status.
func Main(args []string) int {
	return cli.Run(nbdHelp, os.Stdout, os.Stderr, func() (int, error) {
		cfg, err := parseNbdArgs(args)
		if err != nil {
			return 1, err
		}
		if cfg == nil {
			fmt.Println(cli.VersionLine())
			return 0, nil
		}
		return runNbd(cfg)
	})
}

func parseNbdArgs(args []string) (*nbdConfig, error) {
	opts, operands, err := cli.ParseOpts(args, nbdSpec)
	if err != nil {
		return nil, err
	}
	cfg := &nbdConfig{port: "10809", bind: "0.0.0.0", shared: 1}
	var cacheSet, portSet, bindSet bool
	for _, o := range opts {
		switch o.Name {
		case "p", "port":
			n, err := strconv.Atoi(o.Val)
			if err != nil || n < 0 || n > 65535 {
				return nil, cli.Usagef("Invalid port '%s'", o.Val)
			}
			cfg.port, portSet = o.Val, true
		case "b", "bind":
			cfg.bind, bindSet = o.Val, true
		case "k", "socket":
			if o.Val == "" {
				return nil, cli.Usagef("--socket needs a path")
			}
			cfg.socket = o.Val
		case "e", "shared":
			n, err := strconv.Atoi(o.Val)
			if err != nil || n < 0 {
				return nil, cli.Usagef("Invalid shared device number '%s'", o.Val)
			}
			cfg.shared = n
		case "t", "persistent":
			cfg.persistent = true
		case "L", "list":
			cfg.list = true
		case "x", "export-name":
			if len(o.Val) > 4096 {
				return nil, cli.Usagef("export name too long (the protocol allows 4096 bytes)")
			}
			cfg.name = o.Val
		case "D", "description":
			if len(o.Val) > 4096 {
				return nil, cli.Usagef("export description too long (the protocol allows 4096 bytes)")
			}
			cfg.desc = o.Val
		case "r", "read-only":
			cfg.readOnly = true
		case "f", "format":
			switch o.Val {
			case "raw", "qcow2":
			default:
				return nil, cli.Usagef("Unknown file format '%s' (ringblk nbd serves raw and qcow2)", o.Val)
			}
			cfg.format = o.Val
		case "n", "nocache":
			if cacheSet {
				return nil, cli.Usagef("-n and --cache can only be specified once")
			}
			cacheSet, cfg.co.Cache = true, raw.CacheNone
		case "cache":
			if cacheSet {
				return nil, cli.Usagef("-n and --cache can only be specified once")
			}
			cacheSet = true
			switch o.Val {
			case "directsync", "unsafe":
				return nil, cli.Usagef("Invalid cache mode '%s': ringblk supports writeback, writethrough and none", o.Val)
			}
			m, ok := raw.ParseCache(o.Val)
			if !ok {
				return nil, cli.Usagef("Invalid cache mode '%s'", o.Val)
			}
			cfg.co.Cache = m
		case "aio":
			switch o.Val {
			case "threads", "native", "io_uring":
			default:
				return nil, cli.Usagef("Invalid aio mode '%s'", o.Val)
			}
		case "discard":
			switch o.Val {
			case "ignore", "off":
				cfg.co.Discard = raw.DiscardIgnore
			case "unmap", "on":
				cfg.co.Discard = raw.DiscardUnmap
			default:
				return nil, cli.Usagef("Invalid discard mode `%s'", o.Val)
			}
		case "detect-zeroes":
			d, ok := raw.ParseDetectZeroes(o.Val)
			if !ok {
				return nil, cli.Usagef("Invalid detect-zeroes mode '%s' (off, on or unmap)", o.Val)
			}
			cfg.co.DetectZeroes = d
		case "A", "allocation-depth":
			cfg.depth = true
		case "fork":
			cfg.fork = true
		case "pid-file":
			cfg.pidFile = o.Val
		case "v", "verbose":
			cfg.verbose = true
		case "V", "version":
			return nil, nil
		case "B", "bitmap":
			cfg.bitmaps = append(cfg.bitmaps, o.Val)
		case "c", "connect", "d", "disconnect":
			return nil, cli.Usagef("-%s: ringblk nbd does not drive the kernel's /dev/nbd devices", o.Name)
		case "l", "load-snapshot":
			// As qemu-nbd: the snapshot is exported read-only.
			ref, err := cli.ParseSnapshotRef(o.Val)
			if err != nil {
				return nil, err
			}
			cfg.snapshot, cfg.readOnly = ref, true
		case "s", "snapshot":
			cfg.tempSnapshot = true
		case "o", "offset":
			return nil, cli.Usagef("--offset is not supported (use a raw image of its own)")
		case "object":
			id, obj, err := parseObject(o.Val)
			if err != nil {
				return nil, err
			}
			if cfg.objects == nil {
				cfg.objects = map[string]tlsObject{}
			}
			if _, dup := cfg.objects[id]; dup {
				return nil, cli.Usagef("--object: an object with id '%s' already exists", id)
			}
			cfg.objects[id] = obj
		case "tls-creds":
			cfg.tlsCreds = o.Val
		case "tls-authz":
			return nil, cli.Usagef("--tls-authz is not supported (verify-peer=on checks client certificates against the CA)")
		case "tls-hostname":
			return nil, cli.Usagef("--tls-hostname applies to -c/--connect, which ringblk nbd does not support")
		case "image-opts":
			cfg.imageOpts = true
		case "T", "trace":
			return nil, cli.Usagef("--trace is not supported")
		}
	}
	if cfg.co.DetectZeroes == raw.DetectZeroesUnmap && cfg.co.Discard != raw.DiscardUnmap {
		return nil, cli.Usagef("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
	}
	if cfg.tlsCreds != "" {
		obj, ok := cfg.objects[cfg.tlsCreds]
		if !ok {
			return nil, cli.Usagef("No TLS credentials with id '%s'", cfg.tlsCreds)
		}
		cfg.tls = &obj
	}
	if cfg.socket != "" && (portSet || bindSet) {
		return nil, cli.Usagef("-k and -p/-b cannot be used together")
	}
	if cfg.list {
		// A client of a server: no image, and nothing of a server's.
		if len(operands) > 0 {
			return nil, cli.Usagef("List mode is incompatible with a file name")
		}
		if cfg.tlsCreds != "" {
			return nil, cli.Usagef("--list with --tls-creds is not supported (ringblk's client takes TLS from nbds:// URIs)")
		}
		return cfg, nil
	}
	switch len(operands) {
	case 0:
		return nil, cli.Usagef("Expected exactly one image file name (see 'ringblk nbd --help')")
	case 1:
	default:
		return nil, cli.Usagef("Unexpected argument '%s' (see 'ringblk nbd --help')", operands[1])
	}
	cfg.file = operands[0]
	return cfg, nil
}

// forkEnv marks the background copy --fork starts; its value is the
// descriptor on which it reports that it listens.
const forkEnv = "RINGBLK_NBD_FORKED"

func runNbd(cfg *nbdConfig) (int, error) {
	if cfg.list {
		return listExports(cfg)
	}
	if cfg.fork && os.Getenv(forkEnv) == "" {
		return forkNbd()
	}
	isRBD := rbd.IsName(cfg.file) // a Ceph image: no local file, probed once open
	var spec chain.Spec
	if cfg.imageOpts {
		// --image-opts: FILE is QEMU's option string
		// (driver=qcow2,file.driver=file,file.filename=PATH).
		var err error
		if spec, err = cli.ImageOptsSpec(cfg.file); err != nil {
			return 1, fmt.Errorf("Failed to blk_new_open '%s': %v", cfg.file, err)
		}
		if cfg.format != "" {
			return 1, cli.Usagef("--image-opts and --format are mutually exclusive")
		}
	} else if _, err := os.Stat(cfg.file); err != nil && !isRBD {
		return 1, fmt.Errorf("Failed to blk_new_open '%s': Could not open '%s': %v", cfg.file, cfg.file, cli.UnwrapPathErr(err))
	}
	ctx, g, err := cli.NewServerEnv()
	if err != nil {
		return 1, err
	}
	defer ctx.Stop()
	co := cfg.co
	// -s: the image is only read; a temporary overlay takes the writes.
	co.Format, co.ReadOnly, co.Name = cfg.format, cfg.readOnly || cfg.tempSnapshot, "nbd0"
	if co.Format == "" && !isRBD && spec == nil {
		if co.Format, err = chain.Probe(cfg.file); err != nil {
			return 1, fmt.Errorf("Failed to blk_new_open '%s': %v", cfg.file, err)
		}
		co.Probed = true // a client must not turn the export into another format
	}
	var img *chain.Image
	if spec != nil {
		img, err = chain.OpenSpec(g, spec, co)
		co.Format = img0Format(img)
	} else {
		img, err = chain.Open(g, cfg.file, co)
	}
	if err != nil {
		return 1, fmt.Errorf("Failed to blk_new_open '%s': %v", cfg.file, cli.PlainErr(err))
	}
	node := img.Node
	if cfg.tempSnapshot {
		// As qemu-nbd -s: a qcow2 overlay in $TMPDIR (default /var/tmp),
		// unlinked at once, over the image opened read-only; the client
		// writes into it and the image stays as it was.
		bi := &cli.BlkImage{Ctx: ctx, Graph: g, Node: node}
		if err := bi.Snapshot(); err != nil {
			node.Unref()
			return 1, err
		}
		node = bi.Node
	}
	if cfg.snapshot != nil {
		q, _ := node.Driver().(*qcow2.Driver)
		if err := cfg.snapshot.Load(q, co.Format); err != nil {
			node.Unref()
			return 1, err
		}
	}
	if err := inconsistentBitmap(node, cfg.bitmaps); err != nil {
		node.Unref()
		return 1, err
	}
	dz := nbd.DetectZeroesOff
	switch cfg.co.DetectZeroes {
	case raw.DetectZeroesOn:
		dz = nbd.DetectZeroesOn
	case raw.DetectZeroesUnmap:
		dz = nbd.DetectZeroesUnmap
	}
	exp, err := nbd.NewExport(g, node, nbd.ExportOptions{
		Name: cfg.name, Description: cfg.desc, ReadOnly: cfg.readOnly,
		MaxConnections: cfg.shared, AllocationDepth: cfg.depth, Bitmaps: cfg.bitmaps,
		// The file node ignores discards already, but a qcow2 node above
		// it would still discard: qemu-nbd drops them at the top.
		IgnoreDiscard: cfg.co.Discard == raw.DiscardIgnore,
		// Likewise the file node detects zeroes only after a qcow2 node
		// has allocated clusters for them: the export does it at the top.
		DetectZeroes: dz,
	})
	if err != nil {
		node.Unref()
		return 1, err
	}
	srv := nbd.NewServer()
	srv.OneShot = !cfg.persistent
	if cfg.tls != nil {
		tc, err := nbd.TLSServerConfig(cfg.tls.dir, cfg.tls.verifyPeer)
		if err != nil {
			exp.Close()
			node.Unref()
			return 1, fmt.Errorf("Failed to load TLS credentials '%s': %v", cfg.tlsCreds, err)
		}
		srv.SetTLS(tc)
	}
	if cfg.verbose {
		srv.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	srv.AddExport(exp)
	var l net.Listener
	if cfg.socket != "" {
		// A socket left by a server that died is replaced, as QEMU does;
		// any other file is not.
		if fi, err := os.Lstat(cfg.socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(cfg.socket)
		}
		l, err = net.Listen("unix", cfg.socket)
	} else {
		l, err = net.Listen("tcp", net.JoinHostPort(cfg.bind, cfg.port))
	}
	if err != nil {
		exp.Close()
		node.Unref()
		return 1, fmt.Errorf("Failed to bind socket: %v", err)
	}
	if cfg.socket != "" {
		defer os.Remove(cfg.socket)
	}
	if cfg.pidFile != "" {
		if err := os.WriteFile(cfg.pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			l.Close()
			exp.Close()
			node.Unref()
			return 1, fmt.Errorf("Failed to write pid file %s: %v", cfg.pidFile, err)
		}
		defer os.Remove(cfg.pidFile)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	if fd := os.Getenv(forkEnv); fd != "" {
		// Tell the parent we listen, then leave its terminal.
		if n, err := strconv.Atoi(fd); err == nil {
			f := os.NewFile(uintptr(n), "ready")
			f.Write([]byte{1})
			f.Close()
		}
		if dn, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
			syscall.Dup2(int(dn.Fd()), 0)
			syscall.Dup2(int(dn.Fd()), 1)
			syscall.Dup2(int(dn.Fd()), 2)
			dn.Close()
		}
	}
	var serveErr error
	select {
	case <-sigs:
	case <-srv.Served():
	case serveErr = <-served:
	}
	srv.Close()
	cerr := exp.Close()
	ferr := error(nil)
	if !cfg.readOnly {
		ferr = node.Flush()
	}
	uerr := node.Unref()
	if err := errors.Join(serveErr, cerr, ferr, uerr); err != nil {
		return 1, fmt.Errorf("shutting down: %v", cli.PlainErr(err))
	}
	return 0, nil
}

// forkNbd runs this command again in the background and returns once it
// listens (exit 0), or with its failure (exit 1; it printed why).
func forkNbd() (int, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 1, err
	}
	exe, err := os.Executable()
	if err != nil {
		return 1, err
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	// The same argv[0]: run through a link named qemu-nbd, the copy must
	// be that drop-in too (its arguments have no "nbd"). Before, it ran
	// as ringblk and refused its first option as an unknown command.
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), forkEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 1, fmt.Errorf("--fork: %v", err)
	}
	w.Close()
	var b [1]byte
	n, _ := io.ReadFull(r, b[:])
	r.Close()
	if n == 1 {
		cmd.Process.Release()
		return 0, nil
	}
	cmd.Wait()
	return 1, errors.New("--fork: the server did not start")
}

// inconsistentBitmap refuses to export a qcow2 persistent bitmap found in
// use at open (its bits cannot be trusted), with qemu-nbd's message.
func inconsistentBitmap(n *block.Node, names []string) error {
	d, ok := n.Driver().(*qcow2.Driver)
	if !ok {
		return nil
	}
	for _, name := range names {
		if n.Bitmap(name) != nil {
			continue
		}
		if d.InconsistentBitmap(name) {
			return fmt.Errorf("Bitmap '%s' is inconsistent and cannot be used", name)
		}
	}
	return nil
}

// nbdFlagNames are qemu-nbd --list's names of the transmission flags, by
// bit (bit 0, "has flags", is not shown).
var nbdFlagNames = [...]string{1: "readonly", 2: "flush", 3: "fua", 4: "rotational", 5: "trim", 6: "zeroes",
	7: "df", 8: "multi", 9: "resize", 10: "cache", 11: "fast-zero"}

// listExports is -L: the server's exports in qemu-nbd --list's layout.
func listExports(cfg *nbdConfig) (int, error) {
	u := nbdc.URI{Network: "tcp", Addr: net.JoinHostPort(cfg.bind, cfg.port)}
	if cfg.socket != "" {
		u = nbdc.URI{Network: "unix", Addr: cfg.socket}
	}
	list, err := nbdc.List(u)
	if err != nil {
		var ce *nbdc.ConnectError
		if errors.As(err, &ce) {
			return 1, err
		}
		return 1, fmt.Errorf("Failed to list exports: %v", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "exports available: %d\n", len(list))
	for _, e := range list {
		fmt.Fprintf(&b, " export: '%s'\n", e.Name)
		if e.Description != "" {
			fmt.Fprintf(&b, "  description: %s\n", e.Description)
		}
		if e.HasInfo {
			fmt.Fprintf(&b, "  size:  %d\n", e.Size)
			fmt.Fprintf(&b, "  flags: 0x%x (", e.Flags)
			for bit, name := range nbdFlagNames {
				if name != "" && e.Flags&(1<<bit) != 0 {
					b.WriteString(" " + name)
				}
			}
			b.WriteString(" )\n")
		}
		if e.MinBlock != 0 {
			fmt.Fprintf(&b, "  min block: %d\n  opt block: %d\n  max block: %d\n", e.MinBlock, e.PrefBlock, e.MaxBlock)
		}
		if len(e.Contexts) > 0 {
			fmt.Fprintf(&b, "  available meta contexts: %d\n", len(e.Contexts))
			for _, c := range e.Contexts {
				fmt.Fprintf(&b, "   %s\n", c)
			}
		}
	}
	if _, err := os.Stdout.WriteString(b.String()); err != nil {
		return 1, err
	}
	return 0, nil
}

// img0Format is the format of an image opened from options ("" when the
// open failed).
func img0Format(img *chain.Image) string {
	if img == nil {
		return ""
	}
	return img.Format
}
