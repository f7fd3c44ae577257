//go:build race

package bench

// raceEnabled: the race detector's runtime allocates inside crypto/sha256.
const raceEnabled = true
