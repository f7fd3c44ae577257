package luks

import (
	"github.com/ringblk/ringblk/block"
	cl "github.com/ringblk/ringblk/crypto/luks"
)

// Create formats file as a LUKS volume with a payload of size bytes: the
// file is emptied, the header and key slot 0's material written, and the
// file sized to payload offset + size (the payload sparse, as qemu-img
// leaves it). size must be a multiple of SectorSize.
func Create(file *block.Node, size int64, o cl.CreateOptions) (*cl.Header, error) {
	h, mat, _, err := cl.Create(o)
	if err != nil {
		return nil, err
	}
	if err := file.Truncate(0); err != nil {
		return nil, err
	}
	if _, err := file.WriteAt(h.Marshal(), 0); err != nil {
		return nil, err
	}
	if _, err := file.WriteAt(mat, int64(h.Slots[0].KeyOffset)*cl.SectorSize); err != nil {
		return nil, err
	}
	if err := file.Truncate(h.PayloadBytes() + size); err != nil {
		return nil, err
	}
	return h, file.Flush()
}
