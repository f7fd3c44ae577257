package qcow2

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
	"github.com/ringblk/ringblk/drivers/raw"
	"github.com/ringblk/ringblk/internal/invariants"
)

// Every test of this package runs format.Image.Check on the image file
// after every metadata flush (afterFlushHook): a flush must leave an image
// that was clean at open with no corruption (leaks are allowed: clusters
// allocated by writes still in flight, frees not yet written). Images that
// were not clean at open (hostile and repair tests) are not checked, nor
// images marked corrupt since, with lazy refcounts (stale refcounts on disk
// by design), or whose file node is not a plain file.
func init() {
	afterOpenHook = func(d *Driver) {
		if res, err := checkFile(d); err != nil || res == nil || res.Corruptions > 0 || res.CheckErrors > 0 {
			uncheckedImages.Store(d, true)
		}
	}
	afterFlushHook = func(d *Driver) {
		if err := checkFileAfterFlush(d); err != nil {
			invariants.Failf("qcow2: after a metadata flush: %v", err)
		}
	}
}

// uncheckedImages holds the drivers whose image was not clean (or not
// checkable) at open.
var uncheckedImages sync.Map

// checkFile checks d's image file, or returns nil, nil when it is not a
// plain file or cannot be checked in memory.
func checkFile(d *Driver) (*format.CheckResult, error) {
	if os.Getenv(killChildEnv) != "" {
		return nil, nil // a kill test's child: the parent checks the file
	}
	rd, ok := d.file.Node().Driver().(*raw.Driver)
	if !ok {
		return nil, nil
	}
	f, err := os.Open(rd.Path())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	im, err := format.ReadImage(f, st.Size(), format.Options{})
	if err != nil {
		return nil, fmt.Errorf("reading the image: %w", err)
	}
	res, err := im.Check()
	if errors.Is(err, format.ErrUnsupported) || errors.Is(err, format.ErrLimit) {
		return nil, nil // persistent bitmaps, or too large to check in memory
	}
	return res, err
}

// flushChecks counts the checks run, for the test that the hook is live.
var flushChecks atomic.Int64

// checkFileAfterFlush checks d's image file after a flush. It returns
// the corruption found, or nil (also when the image is not checked).
func checkFileAfterFlush(d *Driver) error {
	if _, skip := uncheckedImages.Load(d); skip {
		return nil
	}
	d.mu.Lock()
	skip := d.mu.damage != nil || d.opts.CheckOpen || d.mu.corruptErr != nil || d.mu.lazy.on || d.mu.lazy.needRepair || d.mu.inSnapshotOp
	d.mu.Unlock()
	if skip {
		return nil
	}
	res, err := checkFile(d)
	if err != nil || res == nil {
		return err
	}
	flushChecks.Add(1)
	if res.Corruptions > 0 || res.CheckErrors > 0 {
		return fmt.Errorf("%s: %d corruptions, %d check errors: %s", d.nodeName(), res.Corruptions, res.CheckErrors, strings.Join(res.Messages, "; "))
	}
	return nil
}
