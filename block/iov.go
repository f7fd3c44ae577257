package block

// CopyToIov copies src into the vector iov, starting skip bytes into it,
// and stops at the end of either. Drivers use it to fill a request's
// buffers from a bounce or decompression buffer.
func CopyToIov(iov [][]byte, skip int64, src []byte) {
	for _, b := range iov {
		if len(src) == 0 {
			return
		}
		if skip >= int64(len(b)) {
			skip -= int64(len(b))
			continue
		}
		k := copy(b[skip:], src)
		src = src[k:]
		skip = 0
	}
}

// CopyFromIov copies len(dst) bytes of the vector iov, starting skip bytes
// into it, into dst, and stops at the end of either.
func CopyFromIov(dst []byte, iov [][]byte, skip int64) {
	for _, b := range iov {
		if len(dst) == 0 {
			return
		}
		if skip >= int64(len(b)) {
			skip -= int64(len(b))
			continue
		}
		k := copy(dst, b[skip:])
		dst = dst[k:]
		skip = 0
	}
}
