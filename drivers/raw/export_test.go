package raw

// Fd exposes the image's descriptor to tests (to tell its SQEs from the
// Context's own, such as the eventfd read).
func (d *Driver) Fd() int { return d.fd }

// AddrAligned reports whether b starts on an align boundary.
func AddrAligned(b []byte, align uintptr) bool { return addrOf(b)&(align-1) == 0 }
