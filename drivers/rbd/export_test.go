//go:build rbd

package rbd

// ConfValue is the node's cluster connection's value of a librados
// setting (tests).
func (d *Driver) ConfValue(key string) (string, error) { return d.im.c.get(key) }

// Release closes a driver opened without a node (Open).
func (d *Driver) Release() error { return d.release() }
