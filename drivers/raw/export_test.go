package raw

// Fd exposes the image's descriptor to tests (to tell its SQEs from the
// Context's own, such as the eventfd read).
func (d *Driver) Fd() int { return d.fd }
