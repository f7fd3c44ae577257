package main

// The commands' way onto the block layer: one main Context, a graph, and
// an image chain opened through drivers/chain. Commands do their I/O with
// the node's synchronous helpers (ReadAt, WriteAt, Flush, BlockStatus…)
// from the command's goroutine.

import (
	"fmt"
	"strings"

	"github.com/ringblk/ringblk/aio"
	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/chain"
	"github.com/ringblk/ringblk/drivers/qcow2"
	"github.com/ringblk/ringblk/drivers/raw"
)

// blkOptions say how a command opens an image (qemu-img's -f, -U, -t, …).
type blkOptions struct {
	Format     string // "", "raw", "qcow2", "null"
	ReadOnly   bool
	ForceShare bool   // -U
	NoBacking  bool   // open the top image alone
	Cache      string // "" (writeback), "none", "writeback", "writethrough"
	NullSize   int64
	// QcowOptions is handed to every qcow2 driver of the chain.
	QcowOptions qcow2.DriverOptions

	// Discard is what the top image's file node does with discards
	// (qemu-io's -d; the zero value ignores them).
	Discard raw.Discard
}

// blkImage is an image opened for a command, with the Context and graph
// it lives in. Close releases everything.
type blkImage struct {
	Ctx    *aio.Context
	Graph  *block.Graph
	Node   *block.Node
	Path   string
	Format string
	Qcow2  *qcow2.Driver // nil unless Format is "qcow2"
	// owned is false for images opened into another blkImage's graph.
	owned bool
}

// newBlkEnv starts a main Context and a graph for one command.
func newBlkEnv() (*aio.Context, *block.Graph, error) {
	c, err := aio.New(aio.Options{Name: "main", Main: true, CPU: aio.NoCPU, Entries: 256, ArenaSize: 4 << 20})
	if err != nil {
		return nil, nil, fmt.Errorf("cannot create an io_uring Context: %v", err)
	}
	if err := c.Start(); err != nil {
		return nil, nil, fmt.Errorf("cannot start an io_uring Context: %v", err)
	}
	return c, block.NewGraph(c), nil
}

// openBlk opens path in a Context and graph of its own.
func openBlk(path string, o blkOptions) (*blkImage, error) {
	c, g, err := newBlkEnv()
	if err != nil {
		return nil, err
	}
	img, err := openBlkIn(c, g, path, o)
	if err != nil {
		c.Stop()
		return nil, err
	}
	img.owned = true
	return img, nil
}

// openBlkIn opens path as another image of an existing graph (convert and
// compare open two images in one graph). Close drops only the node.
func openBlkIn(c *aio.Context, g *block.Graph, path string, o blkOptions) (*blkImage, error) {
	co := chain.Options{
		Format:      o.Format,
		ReadOnly:    o.ReadOnly,
		ForceShare:  o.ForceShare,
		NoBacking:   o.NoBacking,
		NullSize:    o.NullSize,
		Discard:     o.Discard,
		QcowOptions: o.QcowOptions,
		Name:        nodeNameFor(g, path),
	}
	if o.Cache != "" {
		m, ok := raw.ParseCache(o.Cache)
		if !ok {
			return nil, usagef("Invalid cache option: %s", o.Cache)
		}
		co.Cache = m
	}
	img, err := chain.Open(g, path, co)
	if err != nil {
		return nil, openError(path, err)
	}
	return &blkImage{Ctx: c, Graph: g, Node: img.Node, Path: path, Format: img.Format, Qcow2: img.Qcow2}, nil
}

// nodeNameFor gives each image of a graph its own node name.
func nodeNameFor(g *block.Graph, path string) string {
	_ = g
	blkSeq++
	return fmt.Sprintf("img%d", blkSeq)
}

var blkSeq int

// openError words an open failure as qemu-img does: "Could not open
// 'FILE': cause", unless the cause already names the file.
func openError(path string, err error) error {
	msg := err.Error()
	if strings.HasPrefix(msg, "Could not open") || strings.HasPrefix(msg, "Unknown file format") {
		return err
	}
	return fmt.Errorf("Could not open '%s': %w", path, err)
}

// Close drops the node and, for an image that owns them, stops the
// Context. Dirty metadata is written back by the drivers' Close.
func (b *blkImage) Close() error {
	if b.Node != nil {
		b.Node.Unref()
		b.Node = nil
	}
	if !b.owned {
		return nil
	}
	b.owned = false
	if _, err := b.Ctx.Stop(); err != nil {
		return err
	}
	return nil
}
