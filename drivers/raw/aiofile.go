package raw

import "github.com/ringblk/ringblk/aio"

// AioFile returns the aio File the driver's I/O goes through, for a
// caller that registers it in a Context's ring (aio.Context.RegisterFile,
// bench's registerfiles). A reopen replaces it.
func (d *Driver) AioFile() *aio.File { return d.file }
