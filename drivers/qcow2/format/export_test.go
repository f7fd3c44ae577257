package format

// Names the external tests (package format_test) need.
var ZstdFrameLen = zstdFrameLen
