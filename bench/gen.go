package bench

import (
	"math"
	"math/bits"
	"math/rand/v2"
)

// generator decides what a clone does next: direction, offset, length. It
// is owned by the clone's thread and allocates nothing after newGenerator.
type generator struct {
	job       *Job
	rng       *rand.Rand
	regionOff int64 // first byte of the region
	regionLen int64
	align     int64 // offsets are multiples of this (the smallest block)
	blocks    uint64
	seqOff    [2]int64 // next sequential offset per direction (relative)
	perm      permutation
	permIdx   uint64
	dist      skewed
	// size-limited runs stop after issuing limit bytes; 0: no limit.
	limit, issued int64
	minBlock      int64 // the smallest block of either direction
	// zoned: cumulative access percent and block ranges per zone
	zoneCum   []int
	zoneStart []uint64
	zoneLen   []uint64
	// cumulative bssplit weights per direction
	splitCum [2][]int
	// rw=…:N: the end of the last I/O per direction (relative) and the
	// I/Os left before a new random offset.
	lastEnd [2]int64
	seqLeft int
	ios     int64 // I/Os issued (number_ios)
	// zonemode=strided: bytes done in the current zone per direction
	zoneDone [2]int64
}

func newGenerator(j *Job, clone int, regionOff, regionLen int64) *generator {
	seed := j.RandSeed
	if !j.RandRepeat {
		seed = rand.Uint64()
	}
	seed += uint64(clone) * 0x9e3779b97f4a7c15 // clones differ, reproducibly
	g := &generator{
		job: j, rng: rand.New(rand.NewPCG(seed, seed^0xda3e39cb94b95bdb)),
		regionOff: regionOff, regionLen: regionLen,
		align: int64(min(j.MinBS(DirRead), j.MinBS(DirWrite))),
	}
	if j.Verify != VerifyNone && (j.RW.Writes() || j.DoVerify) {
		// Verified blocks must not straddle each other: align to the one size.
		g.align = int64(j.MaxBS(DirWrite))
		if !j.RW.Writes() {
			g.align = int64(j.MaxBS(DirRead))
		}
	}
	if j.BlockAlign > 0 && (j.Verify == VerifyNone || !(j.RW.Writes() || j.DoVerify)) {
		g.align = j.BlockAlign
	}
	g.blocks = uint64(regionLen / g.align)
	if g.blocks == 0 {
		g.blocks = 1
	}
	g.perm.init(g.blocks, g.rng.Uint64())
	switch j.Dist {
	case DistZipf:
		g.dist.initZipf(g.blocks, j.DistParam)
	case DistPareto:
		g.dist.initPareto(g.blocks, j.DistParam)
	case DistZoned:
		var start uint64
		cum := 0
		for _, z := range j.Zones {
			var n uint64
			if j.ZonesAbs {
				n = uint64(z.Range / g.align)
			} else {
				n = g.blocks * uint64(z.Range) / 100
			}
			n = min(max(n, 1), g.blocks-min(start, g.blocks-1))
			cum += z.Access
			g.zoneCum = append(g.zoneCum, cum)
			g.zoneStart = append(g.zoneStart, min(start, g.blocks-1))
			g.zoneLen = append(g.zoneLen, n)
			start += n
		}
	}
	g.minBlock = int64(max(min(j.MinBS(DirRead), j.MinBS(DirWrite)), 1))
	if !j.TimeBased {
		g.limit = regionLen
		if j.IOSize > 0 {
			g.limit = j.IOSize
		}
		g.limit *= int64(max(j.Loops, 1))
	}
	for d := 0; d < 2; d++ {
		sum := 0
		for _, s := range j.BSSplit[d] {
			sum += s.Percent
			g.splitCum[d] = append(g.splitCum[d], sum)
		}
	}
	return g
}

// next fills in the next I/O. It returns false when a size-limited run has
// issued all its bytes.
func (g *generator) next() (dir int, off int64, n int, ok bool) {
	// fio ends when the bytes left are fewer than the smallest block (a
	// size that is no multiple of bs leaves a tail unwritten).
	if g.limit > 0 && g.issued+g.minBlock > g.limit || g.job.NumberIOs > 0 && g.ios >= g.job.NumberIOs {
		return 0, 0, 0, false
	}
	g.ios++
	j := g.job
	switch j.RW {
	case RWRead, RWRandRead:
		dir = DirRead
	case RWWrite, RWRandWrite:
		dir = DirWrite
	default:
		if g.rng.IntN(100) >= j.RWMixRead {
			dir = DirWrite
		}
	}
	n = g.blockSize(dir)
	if g.limit > 0 && g.limit-g.issued < int64(n) {
		n = int(max(g.limit-g.issued, g.align))
		n = int(int64(n) / g.align * g.align)
	}
	if j.RW.Random() && j.SeqNr > 1 && g.seqLeft > 0 && g.lastEnd[dir]+int64(n) <= g.regionLen {
		// rw=randread:N: the I/Os after a random one follow it.
		g.seqLeft--
		off = g.lastEnd[dir]
	} else if j.RW.Random() {
		g.seqLeft = j.SeqNr - 1
		var b uint64
		switch {
		case j.Dist == DistZoned:
			// A zone by its share of the accesses, then any block of it.
			r := g.rng.IntN(100)
			z := 0
			for z < len(g.zoneCum)-1 && r >= g.zoneCum[z] {
				z++
			}
			b = g.zoneStart[z] + g.rng.Uint64N(g.zoneLen[z])
		case j.Dist == DistNormal:
			// Around the middle of the region, the deviation a percentage
			// of it, folded back into range.
			v := float64(g.blocks)/2 + g.rng.NormFloat64()*float64(g.blocks)*j.DistParam/100
			n := int64(g.blocks)
			k := int64(v) % n
			if k < 0 {
				k += n
			}
			b = uint64(k)
		case j.Dist != DistRandom:
			b = g.perm.at(g.dist.next(g.rng))
		case j.NoRandomMap && j.RandomGen != "lfsr": // lfsr: every block once per pass, map or not
			b = g.rng.Uint64N(g.blocks)
		default:
			if g.permIdx == g.blocks { // a full pass: start another order
				g.permIdx = 0
				g.perm.init(g.blocks, g.rng.Uint64())
			}
			b = g.perm.at(g.permIdx)
			g.permIdx++
		}
		off = int64(b) * g.align
		if off+int64(n) > g.regionLen {
			off = (g.regionLen - int64(n)) / g.align * g.align
		}
	} else {
		off = g.seqOff[dir]
		if add := j.SeqAdd; add != 0 && g.lastEnd[dir] != 0 {
			// rw=read:N, as fio: N bytes after the end of the last I/O;
			// past either end, wrap to the start (N > 0) or to N before
			// the end (N < 0: backwards).
			off = g.lastEnd[dir] + add
			if off < 0 || off >= g.regionLen {
				if add > 0 {
					off = 0
				} else {
					off = g.regionLen + add
				}
			}
			off = max(off, 0)
		}
		if j.ZoneMode == "strided" && j.ZoneSize > 0 && g.zoneDone[dir] >= j.ZoneSize {
			// zonemode=strided: a zone done, skip to the next one.
			g.zoneDone[dir] = 0
			off += j.ZoneSkip
			if off >= g.regionLen {
				off = 0
			}
		}
		if off+int64(n) > g.regionLen {
			off = 0
		}
		g.seqOff[dir] = off + int64(n)
		g.zoneDone[dir] += int64(n)
	}
	g.lastEnd[dir] = off + int64(n)
	g.issued += int64(n)
	return dir, g.regionOff + off, n, true
}

func (g *generator) blockSize(dir int) int {
	j := g.job
	if cum := g.splitCum[dir]; len(cum) > 0 {
		r := g.rng.IntN(cum[len(cum)-1])
		for i, c := range cum {
			if r < c {
				return j.BSSplit[dir][i].Size
			}
		}
	}
	if r := j.BSRange[dir]; r[0] > 0 {
		steps := r[1]/r[0] - 1
		if steps <= 0 {
			return r[0]
		}
		return r[0] * (1 + g.rng.IntN(steps+1))
	}
	return j.BS[dir]
}

// permutation is a keyed bijection of [0, n): a four-round Feistel network
// over the next even power of two, cycle-walked back into range. Walking i
// = 0, 1, … n-1 visits every block once in random order without a map.
type permutation struct {
	n    uint64
	half uint
	mask uint64
	keys [4]uint64
}

func (p *permutation) init(n, seed uint64) {
	p.n = n
	b := uint(bits.Len64(n - 1))
	if b < 2 {
		b = 2
	}
	b = (b + 1) &^ 1
	p.half = b / 2
	p.mask = 1<<p.half - 1
	for i := range p.keys {
		seed = seed*6364136223846793005 + 1442695040888963407
		p.keys[i] = seed
	}
}

func (p *permutation) enc(x uint64) uint64 {
	l, r := x>>p.half, x&p.mask
	for _, k := range p.keys {
		f := (r ^ k) * 0xbf58476d1ce4e5b9
		f ^= f >> 31
		l, r = r, (l^f)&p.mask
	}
	return l<<p.half | r
}

func (p *permutation) at(i uint64) uint64 {
	if p.n <= 1 {
		return 0
	}
	x := p.enc(i)
	for x >= p.n {
		x = p.enc(x)
	}
	return x
}

// skewed draws block ranks from a zipf or pareto distribution; the rank is
// then scattered over the region by the permutation, as fio hashes it.
type skewed struct {
	n      uint64
	pareto bool
	// zipf (Gray et al., "Quickly generating billion-record synthetic
	// databases", SIGMOD 1994)
	theta, zetan, alpha, eta float64
	// pareto
	pow float64
}

// zipfMaxItems bounds the zeta sum, computed once at set-up.
const zipfMaxItems = 10_000_000

func (s *skewed) initZipf(n uint64, theta float64) {
	s.n, s.theta = n, theta
	items := min(n, zipfMaxItems)
	var zeta2 float64
	for i := uint64(1); i <= items; i++ {
		s.zetan += math.Pow(float64(i), -theta)
		if i == 2 {
			zeta2 = s.zetan
		}
	}
	if items < 2 {
		zeta2 = s.zetan
	}
	s.alpha = 1 / (1 - theta)
	s.eta = (1 - math.Pow(2/float64(n), 1-theta)) / (1 - zeta2/s.zetan)
}

func (s *skewed) initPareto(n uint64, h float64) {
	s.n, s.pareto = n, true
	s.pow = math.Log(h) / math.Log(1-h)
}

func (s *skewed) next(rng *rand.Rand) uint64 {
	u := rng.Float64()
	var v float64
	if s.pareto {
		v = float64(s.n-1) * math.Pow(u, s.pow)
	} else {
		uz := u * s.zetan
		switch {
		case uz < 1:
			v = 0
		case uz < 1+math.Pow(0.5, s.theta):
			v = 1
		default:
			v = float64(s.n) * math.Pow(s.eta*u-s.eta+1, s.alpha)
		}
	}
	if !(v >= 0) { // NaN too
		v = 0
	}
	r := uint64(v)
	if r >= s.n {
		r = s.n - 1
	}
	return r
}
