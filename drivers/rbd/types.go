package rbd

// Info describes an RBD image (Stat).
type Info struct {
	Size       int64
	ObjectSize int64
	Features   uint64
	Snapshots  int
}

// SnapInfo is one snapshot of an image.
type SnapInfo struct {
	ID   uint64
	Name string
	Size int64
}
