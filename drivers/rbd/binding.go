//go:build rbd

package rbd

// The binding: the few librados/librbd calls the driver and the commands
// use, each a thin wrapper. Two C helpers keep the I/O path at one cgo call
// per request (rb_submit: create the completion and start the operation)
// and one per batch of completions (rb_reap: poll, read each completion's
// tag and result, release it). The completion's argument is a slot index
// (an integer), never a Go pointer.

/*
#cgo LDFLAGS: -lrbd -lrados
#include "rb.h"
*/
import "C"

import (
	"fmt"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

// Supported reports whether this binary was built with the rbd tag.
const Supported = true

const (
	opRead    = C.RB_READ
	opWrite   = C.RB_WRITE
	opFlush   = C.RB_FLUSH
	opDiscard = C.RB_DISCARD
	opZeroes  = C.RB_ZEROES
)

func errno(r C.int) error {
	if r >= 0 {
		return nil
	}
	return syscall.Errno(-r)
}

// conn is one cluster connection and pool context.
type conn struct {
	cluster C.rados_t
	io      C.rados_ioctx_t
}

func cstr(s string) *C.char { return C.CString(s) }

// get returns the connection's current value of a librados setting.
func (c *conn) get(key string) (string, error) {
	ck := cstr(key)
	defer C.free(unsafe.Pointer(ck))
	buf := make([]byte, 256)
	if r := C.rados_conf_get(c.cluster, ck, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf))); r < 0 {
		return "", fmt.Errorf("reading %s: %w", key, errno(r))
	}
	return C.GoString((*C.char)(unsafe.Pointer(&buf[0]))), nil
}

// set applies librados settings in order (rados_conf_set).
func (c *conn) set(opts []Option) error {
	for _, o := range opts {
		ck, cv := cstr(o.Key), cstr(o.Value)
		r := C.rados_conf_set(c.cluster, ck, cv)
		C.free(unsafe.Pointer(ck))
		C.free(unsafe.Pointer(cv))
		if r < 0 {
			return fmt.Errorf("setting %s=%s: %w", o.Key, o.Value, errno(r))
		}
	}
	return nil
}

// connect reaches the cluster of s and opens its pool (and namespace).
// Errors say which step failed.
func connect(s Spec) (*conn, error) {
	user := s.User
	if user == "" {
		user = "admin"
	}
	cu := cstr(user)
	defer C.free(unsafe.Pointer(cu))
	c := &conn{}
	if r := C.rados_create(&c.cluster, cu); r < 0 {
		return nil, fmt.Errorf("creating the cluster handle for user %q: %w", user, errno(r))
	}
	ok := false
	defer func() {
		if !ok {
			c.close()
		}
	}()
	if s.Conf != "" {
		cc := cstr(s.Conf)
		r := C.rados_conf_read_file(c.cluster, cc)
		C.free(unsafe.Pointer(cc))
		if r < 0 {
			return nil, fmt.Errorf("reading the config file %s: %w", s.Conf, errno(r))
		}
	} else {
		C.rados_conf_read_file(c.cluster, nil) // the default search path; none is fine
	}
	// Our defaults where the config file left librados' own (a setting
	// made with rados_conf_set outranks the file whenever it is made, so
	// only a value still at librados' default is ours to change); the
	// name's options come after them in set.
	var set []Option
	for _, o := range confDefaults {
		if v, err := c.get(o.Key); err == nil && v == o.LibDefault {
			set = append(set, o.Option)
		}
	}
	timeout := s.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	if timeout > 0 {
		secs := strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64)
		// Whole seconds for the mount timeout (an integer option).
		whole := strconv.FormatInt(int64((timeout+time.Second-1)/time.Second), 10)
		set = append(set, Option{"client_mount_timeout", whole},
			Option{"rados_mon_op_timeout", secs}, Option{"rados_osd_op_timeout", secs})
	}
	if s.Keyring != "" {
		set = append(set, Option{"keyring", s.Keyring})
	}
	if s.Key != "" {
		set = append(set, Option{"key", s.Key})
	}
	set = append(set, s.Cache.settings()...)
	set = append(set, s.Options...)
	if err := c.set(set); err != nil {
		return nil, err
	}
	if r := C.rados_connect(c.cluster); r < 0 {
		e := errno(r)
		hint := ""
		switch e {
		case syscall.EACCES, syscall.EPERM:
			hint = " (wrong key or user?)"
		case syscall.ETIMEDOUT:
			hint = fmt.Sprintf(" (no monitor answered within %v)", timeout)
		case syscall.ENOENT:
			hint = " (no keyring or key for the user?)"
		case syscall.EINVAL:
			if s.Key != "" {
				hint = " (the key is not a valid cephx key)"
			}
		}
		return nil, fmt.Errorf("connecting to the cluster as client.%s: %w%s", user, e, hint)
	}
	cp := cstr(s.Pool)
	r := C.rados_ioctx_create(c.cluster, cp, &c.io)
	C.free(unsafe.Pointer(cp))
	if r < 0 {
		if r == -C.ENOENT {
			return nil, fmt.Errorf("pool %q does not exist", s.Pool)
		}
		return nil, fmt.Errorf("opening pool %q: %w", s.Pool, errno(r))
	}
	if s.Namespace != "" {
		cn := cstr(s.Namespace)
		C.rados_ioctx_set_namespace(c.io, cn)
		C.free(unsafe.Pointer(cn))
	}
	ok = true
	return c, nil
}

func (c *conn) close() {
	if c.io != nil {
		C.rados_ioctx_destroy(c.io)
		c.io = nil
	}
	if c.cluster != nil {
		C.rados_shutdown(c.cluster)
		c.cluster = nil
	}
}

// image is an open RBD image.
type image struct {
	c   *conn
	img C.rbd_image_t
}

func openImage(s Spec, readOnly bool) (*image, error) {
	c, err := connect(s)
	if err != nil {
		return nil, err
	}
	ci := cstr(s.Image)
	defer C.free(unsafe.Pointer(ci))
	var cs *C.char
	if s.Snap != "" {
		cs = cstr(s.Snap)
		defer C.free(unsafe.Pointer(cs))
	}
	im := &image{c: c}
	var r C.int
	if readOnly || s.Snap != "" {
		r = C.rbd_open_read_only(c.io, ci, &im.img, cs)
	} else {
		r = C.rbd_open(c.io, ci, &im.img, cs)
	}
	if r < 0 {
		c.close()
		if r == -C.ENOENT {
			if s.Snap != "" {
				return nil, fmt.Errorf("image %q or its snapshot %q does not exist in pool %q", s.Image, s.Snap, s.Pool)
			}
			return nil, fmt.Errorf("image %q does not exist in pool %q", s.Image, s.Pool)
		}
		return nil, fmt.Errorf("opening image %q: %w", s.Image, errno(r))
	}
	return im, nil
}

func (im *image) close() error {
	var err error
	if im.img != nil {
		err = errno(C.rbd_close(im.img))
		im.img = nil
	}
	if im.c != nil {
		im.c.close()
		im.c = nil
	}
	return err
}

func (im *image) size() (int64, error) {
	var sz C.uint64_t
	if r := C.rbd_get_size(im.img, &sz); r < 0 {
		return 0, errno(r)
	}
	return int64(sz), nil
}

func (im *image) resize(size int64) error { return errno(C.rbd_resize(im.img, C.uint64_t(size))) }

func (im *image) setNotification(fd int) error {
	return errno(C.rbd_set_image_notification(im.img, C.int(fd), C.EVENT_TYPE_EVENTFD))
}

func (im *image) info() (Info, error) {
	var st C.rbd_image_info_t
	if r := C.rbd_stat(im.img, &st, C.size_t(unsafe.Sizeof(st))); r < 0 {
		return Info{}, errno(r)
	}
	var f C.uint64_t
	C.rbd_get_features(im.img, &f)
	return Info{Size: int64(st.size), ObjectSize: int64(st.obj_size), Features: uint64(f)}, nil
}

func (im *image) snaps() ([]SnapInfo, error) {
	max := C.int(16)
	for {
		buf := (*C.rbd_snap_info_t)(C.calloc(C.size_t(max), C.size_t(unsafe.Sizeof(C.rbd_snap_info_t{}))))
		n := max
		r := C.rb_snap_list(im.img, buf, &n)
		if r == -C.ERANGE {
			C.free(unsafe.Pointer(buf))
			max = n + 16
			continue
		}
		if r < 0 {
			C.free(unsafe.Pointer(buf))
			return nil, errno(r)
		}
		list := unsafe.Slice(buf, int(r))
		out := make([]SnapInfo, 0, int(r))
		for _, s := range list {
			out = append(out, SnapInfo{ID: uint64(s.id), Name: C.GoString(s.name), Size: int64(s.size)})
		}
		C.rbd_snap_list_end(buf)
		C.free(unsafe.Pointer(buf))
		return out, nil
	}
}

func (im *image) snapCreate(name string) error {
	cn := cstr(name)
	defer C.free(unsafe.Pointer(cn))
	return errno(C.rbd_snap_create(im.img, cn))
}

func (im *image) snapRemove(name string) error {
	cn := cstr(name)
	defer C.free(unsafe.Pointer(cn))
	return errno(C.rbd_snap_remove(im.img, cn))
}

func (im *image) snapRollback(name string) error {
	cn := cstr(name)
	defer C.free(unsafe.Pointer(cn))
	return errno(C.rbd_snap_rollback(im.img, cn))
}

// extent is one range from rbd_diff_iterate2.
type extent struct {
	off, len int64
	exists   bool
}

// diff lists up to len(buf) extents of [off, off+n) that hold data (or,
// with exists false, were discarded) in the image and its parents.
func (im *image) diff(off, n int64, wholeObject bool, buf *C.struct_rb_extent, capacity int) (int, error) {
	wo := C.int(0)
	if wholeObject {
		wo = 1
	}
	r := C.rb_diff(im.img, C.uint64_t(off), C.uint64_t(n), wo, buf, C.int(capacity))
	if r < 0 {
		return 0, errno(r)
	}
	return int(r), nil
}

func createImage(c *conn, name string, size int64) error {
	cn := cstr(name)
	defer C.free(unsafe.Pointer(cn))
	opts := C.rbd_image_options_t(nil)
	C.rbd_image_options_create(&opts)
	defer C.rbd_image_options_destroy(opts)
	return errno(C.rbd_create4(c.io, cn, C.uint64_t(size), opts))
}

func removeImage(c *conn, name string) error {
	cn := cstr(name)
	defer C.free(unsafe.Pointer(cn))
	return errno(C.rbd_remove(c.io, cn))
}
