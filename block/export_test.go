package block

// Internal entry points for benchmarks that measure the drain itself,
// without the main-Context check of the exported calls.
var (
	DrainedBeginOnMain = (*Node).drainedBegin
	DrainedEndOnMain   = (*Node).drainedEnd
)
