package qmp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// Options configure a Server.
type Options struct {
	// MaxMessage caps one request's size in bytes (0: 1 MiB); a larger
	// request is skipped and answered with a GenericError.
	MaxMessage int
	// Version is reported in the greeting's "package" member.
	Version string
	// Logger receives connection errors (nil: none).
	Logger *slog.Logger
}

// Server speaks QMP on any number of listeners: a greeting, capability
// negotiation, then commands run one at a time (across every client, as
// under QEMU's big lock) and events broadcast to every negotiated client.
type Server struct {
	reg  *Registry
	opts Options

	cmdMu sync.Mutex // one command at a time

	mu        sync.Mutex
	clients   map[*Client]struct{}
	listeners []net.Listener
	closed    bool
	wg        sync.WaitGroup
}

// NewServer returns a server for the commands of reg. qmp_capabilities is
// built in.
func NewServer(reg *Registry, opts Options) *Server {
	if opts.MaxMessage <= 0 {
		opts.MaxMessage = defaultMaxMessage
	}
	return &Server{reg: reg, opts: opts, clients: map[*Client]struct{}{}}
}

// Client is one connection.
type Client struct {
	s          *Server
	nc         net.Conn
	out        chan []byte
	negotiated bool
	gone       chan struct{}
	once       sync.Once
	flush      chan struct{} // closed by Server.Close: send what is queued, then hang up
	flushOnce  sync.Once
}

// Server returns the server the client is connected to.
func (c *Client) Server() *Server { return c.s }

// ListenUnix listens on a Unix socket at path, created owner-only (0600);
// a stale socket file is replaced.
func ListenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("qmp: %s: another server is listening there", path)
		}
		_ = os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Serve accepts clients on l until l is closed or the server is.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return net.ErrClosed
	}
	s.listeners = append(s.listeners, l)
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	for {
		nc, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		s.ServeConn(nc)
	}
}

// ServeConn serves one connection on goroutines of its own and returns at
// once.
func (s *Server) ServeConn(nc net.Conn) {
	c := &Client{s: s, nc: nc, out: make(chan []byte, eventQueueLength), gone: make(chan struct{}), flush: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.clients[c] = struct{}{}
	s.wg.Add(2)
	s.mu.Unlock()
	go c.writeLoop()
	go c.readLoop()
}

// Close stops accepting, lets a running command finish, sends every
// client the replies and events queued for it (giving it a second to take
// them), disconnects it and waits until every connection goroutine has
// returned.
func (s *Server) Close() {
	s.cmdMu.Lock()
	s.mu.Lock()
	s.closed = true
	ls := s.listeners
	cs := make([]*Client, 0, len(s.clients))
	for c := range s.clients {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	s.cmdMu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, c := range cs {
		// The writer sends what is queued (within a second) and then
		// closes the connection, which ends the reader.
		c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		c.flushOnce.Do(func() { close(c.flush) })
	}
	s.wg.Wait()
}

// Emit sends an event to every client that negotiated capabilities. A
// client that lets eventQueueLength messages pile up is disconnected
// rather than let memory grow.
func (s *Server) Emit(name string, data any) {
	b, err := marshalQEMU(Event{Event: name, Data: data, Timestamp: stamp(time.Now())})
	if err != nil {
		s.logf("qmp: event %s: %v", name, err)
		return
	}
	s.mu.Lock()
	var slow []*Client
	for c := range s.clients {
		if !c.isNegotiated() {
			continue
		}
		select {
		case c.out <- b:
		default:
			slow = append(slow, c)
		}
	}
	s.mu.Unlock()
	for _, c := range slow {
		s.logf("qmp: client not reading its events; disconnected")
		c.close()
	}
}

// Clients returns the number of connected clients.
func (s *Server) Clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logger != nil {
		s.opts.Logger.Info(fmt.Sprintf(format, args...))
	}
}

func (c *Client) isNegotiated() bool {
	// Written only by the read loop under s.mu.
	return c.negotiated
}

func (c *Client) close() {
	c.once.Do(func() {
		close(c.gone)
		c.nc.Close()
	})
}

// send queues a message. A client that lets eventQueueLength messages
// pile up is not reading: it is disconnected rather than let a command
// (which sends under the command lock) wait for it.
func (c *Client) send(v any) {
	b, err := marshalQEMU(v)
	if err != nil {
		b, _ = marshalQEMU(response{Error: Errorf("internal error: cannot encode the reply: %v", err)})
	}
	select {
	case c.out <- b:
	case <-c.gone:
	default:
		c.s.logf("qmp: client not reading its replies; disconnected")
		c.close()
	}
}

func (c *Client) writeLoop() {
	defer c.s.wg.Done()
	write := func(b []byte) bool {
		if len(b) == 0 || b[len(b)-1] != '\n' { // a Print line ends in its own '\n'
			b = append(b, '\r', '\n')
		}
		if _, err := c.nc.Write(b); err != nil {
			c.close()
			return false
		}
		return true
	}
	for {
		select {
		case b := <-c.out:
			if !write(b) {
				return
			}
		case <-c.flush:
			for {
				select {
				case b := <-c.out:
					if !write(b) {
						return
					}
				default:
					c.close()
					return
				}
			}
		case <-c.gone:
			return
		}
	}
}

type greeting struct {
	QMP struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	} `json:"QMP"`
}

// OutputOutlivesInput is implemented by a connection whose output stays
// open after its input ends, until the server closes: the standard input
// and output of a daemon whose monitor is "--chardev stdio" (QEMU goes on
// writing replies and events there when its input reaches its end).
type OutputOutlivesInput interface{ OutputOutlivesInput() bool }

// StandardOutput is implemented by a connection that writes to the
// daemon's standard output ("--chardev stdio"), where Print puts lines.
type StandardOutput interface{ StandardOutput() bool }

// Print puts line on the daemon's standard output in order with the
// messages queued for the client connected there (a stdio monitor), as
// QEMU prints there between its replies. It reports false when no such
// client is connected, or its queue is full; the caller then writes the
// line itself.
func (s *Server) Print(line string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		if o, ok := c.nc.(StandardOutput); ok && o.StandardOutput() {
			select {
			case c.out <- []byte(line + "\n"):
				return true
			default:
				return false
			}
		}
	}
	return false
}

// endOfInputGrace bounds the writing of the replies a client is owed
// once its input has ended.
const endOfInputGrace = 5 * time.Second

func (c *Client) readLoop() {
	defer c.s.wg.Done()
	defer func() {
		c.close()
		c.s.mu.Lock()
		delete(c.s.clients, c)
		c.s.mu.Unlock()
	}()
	var g greeting
	g.QMP.Version.QEMU.Major = greetingQEMUVersion
	g.QMP.Version.Package = c.s.opts.Version
	g.QMP.Capabilities = []string{}
	c.send(g)
	sp := NewSplitter(c.nc, c.s.opts.MaxMessage)
	for {
		msg, err := sp.Next()
		if err != nil {
			var se *splitError
			if errors.As(err, &se) {
				c.send(response{Error: Errorf("%s", se.desc)})
				continue
			}
			if o, ok := c.nc.(OutputOutlivesInput); ok && o.OutputOutlivesInput() && errors.Is(err, io.EOF) {
				// A stdio monitor: its output stays open for the replies
				// and the events until the server closes.
				<-c.gone
			} else if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				// The client's input ended (it shut down its writing
				// side): it still gets the replies queued for what it
				// sent, within a bound, and then the end of the stream.
				c.nc.SetWriteDeadline(time.Now().Add(endOfInputGrace))
				c.flushOnce.Do(func() { close(c.flush) })
				<-c.gone
			} else if !errors.Is(err, net.ErrClosed) {
				c.s.logf("qmp: read: %v", err)
			}
			return
		}
		c.handle(msg)
	}
}

func (c *Client) handle(msg []byte) {
	req, qerr := parseRequest(msg)
	if qerr != nil {
		c.send(response{Error: qerr, ID: req.ID})
		return
	}
	if req.OOB {
		c.send(response{Error: Errorf("QMP input member 'exec-oob' is not supported: out-of-band execution was not negotiated"), ID: req.ID})
		return
	}
	if !c.negotiated {
		if req.Execute != "qmp_capabilities" {
			c.send(response{Error: &Error{Class: CommandNotFound, Desc: "Expecting capabilities negotiation with 'qmp_capabilities'"}, ID: req.ID})
			return
		}
		if err := checkCapabilities(req.Arguments); err != nil {
			c.send(response{Error: err, ID: req.ID})
			return
		}
		c.s.mu.Lock()
		c.negotiated = true
		c.s.mu.Unlock()
		c.send(response{ID: req.ID})
		return
	}
	if req.Execute == "qmp_capabilities" {
		c.send(response{Error: &Error{Class: CommandNotFound, Desc: "Capabilities negotiation is already complete, command ignored"}, ID: req.ID})
		return
	}
	cmd := c.s.reg.lookup(req.Execute)
	if cmd == nil {
		c.send(response{Error: &Error{Class: CommandNotFound, Desc: fmt.Sprintf("The command %s has not been found", req.Execute)}, ID: req.ID})
		return
	}
	args, qerr := cmd.decode(req.Arguments)
	if qerr != nil {
		c.send(response{Error: qerr, ID: req.ID})
		return
	}
	// The command runs to its end even if the client goes away meanwhile:
	// a transaction is never left half applied. The reply is queued
	// before the lock is released, so Close sends it.
	c.s.cmdMu.Lock()
	defer c.s.cmdMu.Unlock()
	ret, err := c.run(cmd, args)
	if err != nil {
		c.send(response{Error: asError(err), ID: req.ID})
		return
	}
	c.send(response{Return: ret, ID: req.ID})
}

// run calls the handler. A panic is not recovered: it is a broken
// invariant of the block layer, and the daemon stops (ARCHITECTURE.md,
// Errors).
func (c *Client) run(cmd *command, args any) (any, error) { return cmd.fn(c, args) }

// checkCapabilities accepts qmp_capabilities' optional "enable" list; no
// capability (not even oob) is offered, so any name is refused.
func checkCapabilities(raw json.RawMessage) *Error {
	if len(raw) == 0 {
		return nil
	}
	var a map[string]json.RawMessage
	if err := json.Unmarshal(raw, &a); err != nil {
		return Errorf("QMP input member 'arguments' must be an object")
	}
	for k, v := range a {
		if k != "enable" {
			return Errorf("Parameter '%s' is unexpected", k)
		}
		var caps []string
		if err := json.Unmarshal(v, &caps); err != nil {
			return Errorf("Invalid parameter type for 'enable', expected: array")
		}
		for _, cp := range caps {
			return Errorf("Capability '%s' not available", cp)
		}
	}
	return nil
}

// Locked runs fn under the lock commands run under: no client's command
// runs alongside it.
func (s *Server) Locked(fn func()) {
	s.cmdMu.Lock()
	defer s.cmdMu.Unlock()
	fn()
}

// Execute runs a command in-process (the daemon's command-line options)
// with the same argument checks and under the same lock as a client's.
func (s *Server) Execute(name string, args map[string]any) (any, error) {
	cmd := s.reg.lookup(name)
	if cmd == nil {
		return nil, &Error{Class: CommandNotFound, Desc: fmt.Sprintf("The command %s has not been found", name)}
	}
	raw, err := json.Marshal(args)
	if err != nil {
		return nil, Errorf("%v", err)
	}
	a, qerr := cmd.decode(raw)
	if qerr != nil {
		return nil, qerr
	}
	s.cmdMu.Lock()
	defer s.cmdMu.Unlock()
	return cmd.fn(nil, a)
}
