//go:build !race

package block_test

const raceEnabled = false
