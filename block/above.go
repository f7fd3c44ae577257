package block

import "errors"

// Block status over a backing chain: QEMU's bdrv_block_status_above. A
// range's status over a chain (top first) is that of the first image that
// allocates it (StatusAllocated), or of the bottom image when none does.
// One exception: past the end of a backing image shorter than the image
// above it, the range reads as zeroes, and QEMU counts it as allocated at
// the shorter image's depth without asking that image.
//
// StepAbove is the rule for one image, for walkers that ask each image in
// their own way (the NBD server submits the requests and continues in
// their completions); StatusAbove is the synchronous walk the commands use
// (map, convert, compare, measure).

// AboveStep is what one image's own status decides in a walk down a chain.
type AboveStep uint8

const (
	// AboveDecided: this image's status is the chain's (it allocates the
	// range, or it is the bottom image).
	AboveDecided AboveStep = iota
	// AbovePastEnd: the next image is shorter than the range's offset:
	// the range reads as zeroes, allocated at the next image's depth.
	AbovePastEnd
	// AboveNext: ask the next image about the same range, cut to the
	// length this image's status covers.
	AboveNext
)

// StepAbove applies the rule to st, an image's own status of a range at
// off. bottom says the image is the last of the chain; backingSize is the
// next image's size (unused for the bottom image).
func StepAbove(st Status, bottom bool, off, backingSize int64) AboveStep {
	switch {
	case st&StatusAllocated != 0 || bottom:
		return AboveDecided
	case off >= backingSize:
		return AbovePastEnd
	}
	return AboveNext
}

// ChainStatus is the status of a range over a backing chain.
type ChainStatus struct {
	Status Status
	Pnum   int64 // bytes from the range's start that Status describes
	Depth  int   // the image it is the status of: 0 the top
	// PastEnd: image Depth is shorter than the range's offset; Status is
	// StatusZero|StatusAllocated and that image was not asked.
	PastEnd bool
}

// ErrEmptyChain is StatusAbove's error for a chain of no images.
var ErrEmptyChain = errors.New("block status of an empty image chain")

// StatusAbove walks [off, off+n) down a chain of images images, top first,
// by StepAbove. status(i, off, n) is image i's own status of the range
// (a Node's BlockStatus, or the caller's view of it with its own error
// wording) and must cover 1 to n bytes; size(i) is image i's size. Only
// status's errors are returned, as they are, and ErrEmptyChain.
func StatusAbove(images int, size func(i int) int64, status func(i int, off, n int64) (Status, int64, error), off, n int64) (ChainStatus, error) {
	for i := 0; i < images; i++ {
		st, pnum, err := status(i, off, n)
		if err != nil {
			return ChainStatus{}, err
		}
		bottom := i == images-1
		var backing int64
		if !bottom {
			backing = size(i + 1)
		}
		switch StepAbove(st, bottom, off, backing) {
		case AboveDecided:
			return ChainStatus{Status: st, Pnum: pnum, Depth: i}, nil
		case AbovePastEnd:
			return ChainStatus{Status: StatusZero | StatusAllocated, Pnum: pnum, Depth: i + 1, PastEnd: true}, nil
		}
		n = pnum
	}
	return ChainStatus{}, ErrEmptyChain
}
