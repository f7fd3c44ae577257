//go:build !race

package cache

// fillTable copies src into dst and zeroes the rest. A View reader racing
// the copy reads a slot whose sequence is odd, so its Valid check fails
// and whatever it read is dropped; the race-detector build stores word by
// word with atomics instead (copy_race.go).
func fillTable(dst, src []byte) {
	n := copy(dst, src)
	clear(dst[n:])
}
