package bench

import "encoding/binary"

// payload generates write contents for dedupe_percentage and
// buffer_compress_percentage: a write is a copy of an earlier block's
// contents dedupe_percentage percent of the time (a block is its seed
// expanded by xorshift, so a copy costs no memory), and the last
// buffer_compress_percentage percent of every buffer_compress_chunk is
// zeros.
type payload struct {
	dedupe, compress int // percentages
	chunk            int
	workingSet       bool   // dedupe_mode=working_set: copies from a fixed set of seeds
	wsBlocks         uint64 // the set's size in blocks
	space            uint64 // seed space of this clone (0 with dedupe_global)
	x                uint64 // the clone's generator for choices
	unique           uint64 // unique blocks written so far
}

func newPayload(j *Job, clone int, regionLen int64) *payload {
	if j.DedupePercentage == 0 && j.CompressPercentage == 0 {
		return nil
	}
	p := &payload{dedupe: j.DedupePercentage, compress: j.CompressPercentage, chunk: j.CompressChunk,
		workingSet: j.DedupeMode == "working_set", x: j.RandSeed*0x9e3779b97f4a7c15 + uint64(clone) + 1}
	if p.chunk <= 0 {
		p.chunk = 512
	}
	if !j.DedupeGlobal {
		p.space = uint64(clone+1) << 40
	}
	bs := int64(max(j.MinBS(DirWrite), 1))
	p.wsBlocks = max(1, uint64(regionLen/bs)*uint64(j.DedupeWorkingSet)/100)
	return p
}

func (p *payload) rand() uint64 {
	p.x ^= p.x << 13
	p.x ^= p.x >> 7
	p.x ^= p.x << 17
	return p.x
}

// fill writes the next block's contents into b.
func (p *payload) fill(b []byte) {
	var seed uint64
	switch {
	case p.dedupe > 0 && int(p.rand()%100) < p.dedupe && (p.workingSet || p.unique > 0):
		if p.workingSet {
			seed = p.space + 1<<39 + p.rand()%p.wsBlocks // a block of the working set
		} else {
			seed = p.space + p.rand()%p.unique // an earlier unique block
		}
	default:
		seed = p.space + p.unique
		p.unique++
	}
	x := seed*0xbf58476d1ce4e5b9 + 0x94d049bb133111eb
	keep := p.chunk - p.chunk*p.compress/100
	for c := 0; c < len(b); c += p.chunk {
		end := min(c+p.chunk, len(b))
		k := c
		for ; k+8 <= min(c+keep, end); k += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			binary.LittleEndian.PutUint64(b[k:], x)
		}
		clear(b[k:end])
	}
}
