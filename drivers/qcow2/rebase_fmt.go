package qcow2

// recordableFormatName reports whether name may be recorded as the backing
// format (the header extension) when the operator names it, as `qemu-img
// rebase -u -F host_device` does (iotest 031). Recording is not following:
// an image is opened over its backing file only when the recorded format
// is raw or qcow2 (BackingRequest); any other name makes the backing file
// fail to open, never probed. A name is what QEMU's driver names look
// like: 1 to 32 letters, digits, '-' or '_'.
func recordableFormatName(name string) bool {
	if len(name) == 0 || len(name) > 32 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
