//go:build !rbd

package rbd

import (
	"fmt"

	"github.com/ringblk/ringblk/block"
)

// Supported reports whether this binary was built with the rbd tag.
const Supported = false

func notBuilt(s Spec) error { return fmt.Errorf("Could not open '%s': %w", s, ErrNotBuilt) }

// NewNode fails: this binary has no RBD support.
func NewNode(g *block.Graph, s Spec, readOnly bool, bopts block.Options) (*block.Node, error) {
	return nil, notBuilt(s)
}

// Create fails: this binary has no RBD support.
func Create(s Spec, size int64) error { return notBuilt(s) }

// Remove fails: this binary has no RBD support.
func Remove(s Spec) error { return notBuilt(s) }

// Stat fails: this binary has no RBD support.
func Stat(s Spec) (Info, error) { return Info{}, notBuilt(s) }

// Snapshots fails: this binary has no RBD support.
func Snapshots(s Spec) ([]SnapInfo, error) { return nil, notBuilt(s) }

// SnapCreate fails: this binary has no RBD support.
func SnapCreate(s Spec, name string) error { return notBuilt(s) }

// SnapRemove fails: this binary has no RBD support.
func SnapRemove(s Spec, name string) error { return notBuilt(s) }

// SnapRollback fails: this binary has no RBD support.
func SnapRollback(s Spec, name string) error { return notBuilt(s) }
