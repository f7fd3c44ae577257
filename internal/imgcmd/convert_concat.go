package imgcmd

// A converter normally copies one source chain. With -c and sources that
// do not end on target cluster boundaries it copies all of them as one
// address space (qemu-img reads across its sources the same way), so a
// target cluster can take the tail of one source and the head of the
// next.

// setConcat makes c copy parts back to back as one source.
func (c *converter) setConcat(parts []*imageChain) {
	c.parts, c.size = parts, 0
	for _, p := range parts {
		c.size += p.size()
	}
}

// part returns the source holding byte off and where it starts.
func (c *converter) part(off int64) (*imageChain, int64) {
	var base int64
	for _, p := range c.parts {
		if off < base+p.size() {
			return p, base
		}
		base += p.size()
	}
	return c.parts[len(c.parts)-1], base - c.parts[len(c.parts)-1].size()
}

// statusAbove is the status of the range at off, up to n bytes and at
// most to the end of the source holding off.
func (c *converter) statusAbove(off, n int64) (chainStatus, error) {
	if c.parts == nil {
		return c.src.statusAbove(off, n, c.topOnly)
	}
	p, base := c.part(off)
	return p.statusAbove(off-base, min(n, base+p.size()-off), c.topOnly)
}

// readSource reads len(buf) bytes at off, across sources if needed.
func (c *converter) readSource(buf []byte, off int64) error {
	if c.parts == nil {
		_, err := c.src.levels[0].node.ReadAt(buf, off)
		return err
	}
	for len(buf) > 0 {
		p, base := c.part(off)
		k := min(int64(len(buf)), base+p.size()-off)
		if _, err := p.levels[0].node.ReadAt(buf[:k], off-base); err != nil {
			return err
		}
		buf, off = buf[k:], off+k
	}
	return nil
}
