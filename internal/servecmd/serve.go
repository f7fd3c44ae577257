// Package servecmd is `ringblk serve`: a storage daemon in the manner of
// qemu-storage-daemon. It opens block nodes, IOThreads, QMP monitors, an
// NBD server and exports from its command line, serves QMP until quit or
// SIGTERM, and then drains and closes every image cleanly.
package servecmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/ringblk/ringblk/host"
	"github.com/ringblk/ringblk/qmp"
)

const usageText = `usage: ringblk serve [options]

A storage daemon speaking QMP (qemu-storage-daemon's options):
  --blockdev OPTIONS     add a block node: driver=qcow2,node-name=disk0,file.driver=file,file.filename=PATH
                         (key=value as QEMU's command line, or JSON)
  --object iothread,id=ID
                         add an IOThread (an I/O Context with its own io_uring ring)
  --chardev socket,id=ID,path=PATH,server=on,wait=off
                         a Unix socket (created 0600) for a monitor; host=,port= for TCP needs --allow-tcp
  --chardev stdio,id=ID  the daemon's standard input and output (one client; not with --daemonize)
  --monitor chardev=ID   serve QMP on that chardev
  --nbd-server addr.type=unix,addr.path=PATH | addr.type=inet,addr.host=H,addr.port=P
  --export type=nbd,id=ID,node-name=NODE[,name=NAME][,writable=on]
  --pidfile PATH         write the process id to PATH (locked: a second daemon with the same file is refused)
  --daemonize            return once everything is set up; serve in the background
  --iothreads-max N      I/O Contexts to start, the IOThreads object-add can use (default: max(4, --object count))
  --metrics ADDR         serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9100)
  --allow-tcp            allow TCP monitor chardevs (QMP has no authentication: loopback only)
  --max-message BYTES    largest QMP request (default 1M)

SIGTERM and SIGINT (and QMP quit) drain every node and close every image; SIGHUP is ignored.
`

// config is the parsed command line.
type config struct {
	blockdevs, objects, chardevs, monitors, exports []string
	nbdServer                                       string
	pidfile                                         string
	daemonize, allowTCP                             bool
	iothreadsMax                                    int
	metrics                                         string
	maxMessage                                      int
}

var takesValue = map[string]bool{"blockdev": true, "object": true, "chardev": true, "monitor": true, "nbd-server": true,
	"export": true, "pidfile": true, "iothreads-max": true, "metrics": true, "max-message": true,
	"daemonize": false, "allow-tcp": false, "help": false}

func parseArgs(args []string) (*config, error) {
	cfg := &config{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "-h" {
			a = "--help"
		}
		if !strings.HasPrefix(a, "--") {
			return nil, fmt.Errorf("unexpected argument '%s' (options start with --)", a)
		}
		name, val, hasVal := strings.Cut(a[2:], "=")
		needs, known := takesValue[name]
		if !known {
			if Prefix != "ringblk: serve" {
				return nil, fmt.Errorf("unrecognized option '--%s'", name) // qemu-storage-daemon's words
			}
			return nil, fmt.Errorf("unknown option '--%s' (see 'ringblk serve --help')", name)
		}
		if needs && !hasVal {
			if i+1 >= len(args) {
				return nil, fmt.Errorf("option '--%s' needs a value", name)
			}
			i++
			val = args[i]
		} else if !needs && hasVal {
			return nil, fmt.Errorf("option '--%s' takes no value", name)
		}
		switch name {
		case "help":
			return nil, errHelp
		case "blockdev":
			cfg.blockdevs = append(cfg.blockdevs, val)
		case "object":
			cfg.objects = append(cfg.objects, val)
		case "chardev":
			cfg.chardevs = append(cfg.chardevs, val)
		case "monitor":
			cfg.monitors = append(cfg.monitors, val)
		case "export":
			cfg.exports = append(cfg.exports, val)
		case "nbd-server":
			if cfg.nbdServer != "" {
				return nil, errors.New("--nbd-server given twice")
			}
			cfg.nbdServer = val
		case "pidfile":
			cfg.pidfile = val
		case "daemonize":
			cfg.daemonize = true
		case "allow-tcp":
			cfg.allowTCP = true
		case "metrics":
			cfg.metrics = val
		case "iothreads-max", "max-message":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("--%s: '%s' is not a positive number", name, val)
			}
			if name == "iothreads-max" {
				cfg.iothreadsMax = n
			} else {
				cfg.maxMessage = n
			}
		}
	}
	return cfg, nil
}

var errHelp = errors.New("help")

// daemonEnv marks the background copy --daemonize starts; its value is the
// descriptor on which it reports that it is ready.
const daemonEnv = "RINGBLK_SERVE_DAEMONIZED"

// Prefix starts every message: "ringblk: serve", or "qemu-storage-daemon"
// when the binary runs as that drop-in (cmd/ringblk's dropin.go), so
// scripts matching qemu-storage-daemon's messages see its prefix.
var Prefix = "ringblk: serve"

// Main runs `ringblk serve args…` and returns the exit status.
func Main(args []string) int {
	cfg, err := parseArgs(args)
	if errors.Is(err, errHelp) {
		fmt.Print(usageText)
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", Prefix, err)
		return 1
	}
	if cfg.daemonize && os.Getenv(daemonEnv) == "" {
		return daemonize()
	}
	if err := run(cfg, nil); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", Prefix, err)
		return 1
	}
	return 0
}

// monitorSpec is a chardev with a monitor on it.
type chardev struct {
	id, path, host, port string
	stdio                bool // backend stdio: the daemon's standard input and output
	used                 bool
}

func parseChardev(s string, allowTCP bool) (*chardev, error) {
	kv, err := keyval(s, "backend")
	if err != nil {
		return nil, fmt.Errorf("--chardev: %v", err)
	}
	c := &chardev{}
	for k, v := range kv {
		sv, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("--chardev: '%s' must be a string", k)
		}
		switch k {
		case "backend":
			if sv != "socket" && sv != "stdio" {
				return nil, fmt.Errorf("--chardev: backend '%s' is not supported (socket, stdio)", sv)
			}
			c.stdio = sv == "stdio"
		case "id":
			c.id = sv
		case "path":
			c.path = sv
		case "host":
			c.host = sv
		case "port":
			c.port = sv
		case "server":
			if sv != "on" && sv != "true" && sv != "yes" {
				return nil, errors.New("--chardev: only server=on is supported (the daemon listens)")
			}
		case "wait":
			if sv != "off" && sv != "false" && sv != "no" {
				return nil, errors.New("--chardev: only wait=off is supported")
			}
		default:
			return nil, fmt.Errorf("--chardev: parameter '%s' is unexpected", k)
		}
	}
	if kv["backend"] == nil {
		return nil, errors.New("--chardev: no backend (socket, stdio)")
	}
	if c.stdio {
		for k := range kv {
			if k != "backend" && k != "id" {
				return nil, fmt.Errorf("--chardev: parameter '%s' is unexpected (stdio takes only id)", k)
			}
		}
		if c.id == "" {
			return nil, errors.New("--chardev: parameter 'id' is missing")
		}
		return c, nil
	}
	switch {
	case c.id == "":
		return nil, errors.New("--chardev: parameter 'id' is missing")
	case c.path != "" && (c.host != "" || c.port != ""):
		return nil, errors.New("--chardev: give path (Unix) or host and port (TCP), not both")
	case c.path == "" && (c.host == "" || c.port == ""):
		return nil, errors.New("--chardev: parameter 'path' is missing")
	case c.path == "" && !allowTCP:
		return nil, errors.New("--chardev: a TCP monitor needs --allow-tcp (QMP has no authentication)")
	}
	return c, nil
}

// exec runs an option as the QMP command it stands for.
func execOpt(s *qmp.Server, reg *qmp.Registry, opt, cmd, val, implied string, extra map[string]any) error {
	// qemu-storage-daemon's form: the option and its value, then the
	// error ("--export type=nbd,id=e,node-name=n: Cannot find ...").
	// Not for --object: a secret's data would reach the log.
	if opt != "object" {
		opt = opt + " " + val
	}
	kv, err := keyval(val, implied)
	if err != nil {
		return fmt.Errorf("--%s: %v", opt, err)
	}
	for k, v := range extra {
		kv[k] = v
	}
	if t := reg.ArgType(cmd); t != nil {
		if kv, err = coerce(kv, t); err != nil {
			return fmt.Errorf("--%s: %v", opt, err)
		}
	}
	if _, err := s.Execute(cmd, kv); err != nil {
		var qe *qmp.Error
		if errors.As(err, &qe) {
			return fmt.Errorf("--%s: %s", opt, qe.Desc)
		}
		return fmt.Errorf("--%s: %v", opt, err)
	}
	return nil
}

// shutdownHook, when set (tests), runs as the shutdown begins.
var shutdownHook func()

// run sets everything up and serves until quit or a signal (or until
// stop is closed: tests).
func run(cfg *config, stop <-chan struct{}) (err error) {
	n := cfg.iothreadsMax
	if n == 0 {
		n = max(4, len(cfg.objects))
	}
	var pidf *os.File
	if cfg.pidfile != "" {
		if pidf, err = lockPidfile(cfg.pidfile); err != nil {
			return err
		}
		defer func() {
			os.Remove(cfg.pidfile)
			pidf.Close()
		}()
	}
	h, err := host.New(host.Options{Contexts: n})
	if err != nil {
		return err
	}
	reg := qmp.NewRegistry()
	d := qmp.NewDaemon(h, reg)
	d.SetOutput(os.Stdout)
	srv := qmp.NewServer(reg, qmp.Options{MaxMessage: cfg.maxMessage, Version: "ringblk serve",
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	d.Attach(srv)
	// Signals are caught from here until run returns, after the shutdown
	// below: a SIGTERM or SIGINT that arrives while the daemon drains
	// its nodes and writes back their metadata (after quit, or a second
	// one) must not kill it half way (the deferred signal.Stop used to
	// run first, so such a signal killed the process before any image
	// was closed: persistent bitmaps and cached metadata were lost).
	signal.Ignore(syscall.SIGHUP)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	var cleanup []func()
	defer func() {
		if shutdownHook != nil {
			shutdownHook()
		}
		srv.Close()
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
		err = errors.Join(err, d.Close(), h.Close())
	}()
	for _, o := range cfg.objects {
		if err := execOpt(srv, reg, "object", "object-add", o, "qom-type", nil); err != nil {
			return err
		}
	}
	for _, b := range cfg.blockdevs {
		if err := execOpt(srv, reg, "blockdev", "blockdev-add", b, "", nil); err != nil {
			return err
		}
	}
	chardevs := map[string]*chardev{}
	// The monitors start serving once every option has been carried out,
	// as qemu-storage-daemon runs no command before its main loop: a
	// client that connects early (or a stdio monitor's input) waits, and
	// when a later option fails, no command has run. Before, a command
	// could run while the exports were still being added, and then the
	// daemon exited 1 with a job already started.
	var serve []func()
	stdioUsed := false
	for _, c := range cfg.chardevs {
		cd, err := parseChardev(c, cfg.allowTCP)
		if err != nil {
			return err
		}
		if chardevs[cd.id] != nil {
			return fmt.Errorf("--chardev: duplicate id '%s'", cd.id)
		}
		if cd.stdio {
			// qemu-storage-daemon's words for both.
			if cfg.daemonize {
				return fmt.Errorf("--chardev %s: cannot use stdio with -daemonize", c)
			}
			if stdioUsed {
				return fmt.Errorf("--chardev %s: cannot use stdio by multiple character devices", c)
			}
			stdioUsed = true
		}
		chardevs[cd.id] = cd
	}
	for _, m := range cfg.monitors {
		kv, err := keyval(m, "chardev")
		if err != nil {
			return fmt.Errorf("--monitor: %v", err)
		}
		id, _ := kv["chardev"].(string)
		for k, v := range kv {
			switch k {
			case "chardev", "id":
			case "mode":
				if v != "control" {
					return fmt.Errorf("--monitor: mode '%v' is not supported (control)", v)
				}
			case "pretty":
			default:
				return fmt.Errorf("--monitor: parameter '%s' is unexpected", k)
			}
		}
		cd := chardevs[id]
		if cd == nil {
			return fmt.Errorf("--monitor: chardev '%s' not found", id)
		}
		if cd.used {
			return fmt.Errorf("--monitor: chardev '%s' is already in use", id)
		}
		cd.used = true
		if cd.stdio {
			// One client, for the daemon's life: at the end of its input
			// the daemon goes on serving its other monitors and exports,
			// as qemu-storage-daemon does.
			serve = append(serve, func() { srv.ServeConn(stdioConn{in: os.Stdin, out: os.Stdout}) })
			continue
		}
		var l net.Listener
		if cd.path != "" {
			l, err = qmp.ListenUnix(cd.path)
			path := cd.path
			cleanup = append(cleanup, func() { os.Remove(path) })
		} else {
			l, err = net.Listen("tcp", net.JoinHostPort(cd.host, cd.port))
		}
		if err != nil {
			return fmt.Errorf("--chardev %s: %v", id, err)
		}
		// Closed by srv.Close once served; before that (a later option
		// fails), here.
		cleanup = append(cleanup, func() { l.Close() })
		serve = append(serve, func() { go srv.Serve(l) })
	}
	if cfg.nbdServer != "" {
		if err := execOpt(srv, reg, "nbd-server", "nbd-server-start", cfg.nbdServer, "", nil); err != nil {
			return err
		}
	}
	for _, e := range cfg.exports {
		if err := execOpt(srv, reg, "export", "block-export-add", e, "", nil); err != nil {
			return err
		}
	}
	if cfg.metrics != "" {
		pr := prometheus.NewRegistry()
		if err := pr.Register(qmp.NewMetrics(d)); err != nil {
			return err
		}
		l, err := net.Listen("tcp", cfg.metrics)
		if err != nil {
			return fmt.Errorf("--metrics: %v", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(pr, promhttp.HandlerOpts{}))
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(l)
		// Shutdown waits for a scrape in progress: it runs functions on
		// the Contexts, which must still be running.
		cleanup = append(cleanup, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if hs.Shutdown(ctx) != nil {
				hs.Close()
			}
		})
		if strings.HasSuffix(cfg.metrics, ":0") {
			fmt.Fprintf(os.Stderr, "%s: metrics on %s\n", Prefix, l.Addr())
		}
	}
	if pidf != nil {
		if err := writePid(pidf); err != nil {
			return err
		}
	}
	for _, f := range serve {
		f()
	}
	ready()
	select {
	case <-d.Quit():
	case <-sigs:
	case <-stop:
	}
	// Jobs and exports end while the clients are still connected, so
	// their events reach them (qemu-storage-daemon's order); then the
	// server closes and the devices (the deferred function above). No
	// SHUTDOWN event: that is the system emulator's, and
	// qemu-storage-daemon sends none (qemu-iotests qsd-jobs' expected
	// output has none). quit itself already ran Shutdown, before its
	// reply; a signal runs it here.
	var shutErr error
	srv.Locked(func() { shutErr = d.Shutdown() })
	return shutErr
}

// lockPidfile opens and locks the pid file: a second daemon naming the
// same file is refused while the first runs.
func lockPidfile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("--pidfile: %v", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("--pidfile: %s is locked by another ringblk serve", path)
	}
	return f, nil
}

func writePid(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}

// ready tells the process that started this one with --daemonize that the
// daemon is set up, and leaves its terminal.
func ready() {
	fd := os.Getenv(daemonEnv)
	if fd == "" {
		return
	}
	if n, err := strconv.Atoi(fd); err == nil {
		f := os.NewFile(uintptr(n), "ready")
		f.Write([]byte{1})
		f.Close()
	}
	if dn, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		unix.Dup2(int(dn.Fd()), 0)
		unix.Dup2(int(dn.Fd()), 1)
		unix.Dup2(int(dn.Fd()), 2)
		dn.Close()
	}
}

// daemonize runs this command again in a new session and returns once it
// is ready (exit 0), or with its failure (exit 1; it printed why).
func daemonize() int {
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: --daemonize: %v\n", Prefix, err)
		return 1
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: --daemonize: %v\n", Prefix, err)
		return 1
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	// The same argv[0]: run through a link named qemu-storage-daemon,
	// the copy must be that drop-in too (its arguments have no "serve").
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), daemonEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: --daemonize: %v\n", Prefix, err)
		return 1
	}
	w.Close()
	var b [1]byte
	n, _ := io.ReadFull(r, b[:])
	r.Close()
	if n == 1 {
		cmd.Process.Release()
		return 0
	}
	cmd.Wait()
	return 1
}
