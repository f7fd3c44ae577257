package qcow2

// BackingFormatError is the refusal to open a backing file whose format
// (recorded in the image, or given as DriverOptions.BackingFormat) is
// neither raw nor qcow2. An image may record any name (QEMU's rebase -u
// -F, or a second backing format extension, iotest 114); it only fails
// when the backing file is opened.
type BackingFormatError struct{ Format string }

func (e *BackingFormatError) Error() string {
	return "qcow2: unsupported backing format '" + e.Format + "' (raw and qcow2 only)"
}
