//go:build race

package raw_test

const raceEnabled = true
