package uringtest

import (
	"flag"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// seedFlag replays a failed run. It exists only in test binaries that link
// this package, so for `go test ./...` prefer the RINGBLK_SEED variable.
var seedFlag = flag.Uint64("uringtest.seed", 0, "seed for uringtest rings (0: RINGBLK_SEED or random)")

// Seed returns the seed a test should pass in Options.Seed: the
// -uringtest.seed flag if set, else the RINGBLK_SEED environment variable,
// else a fresh random seed. If the test fails, the seed is logged at the
// end with how to replay it. A test that builds several rings derives their
// seeds from this one (seed+1, seed+2, …) so one number replays them all.
func Seed(t testing.TB) uint64 {
	t.Helper()
	seed := *seedFlag
	if seed == 0 {
		if env := os.Getenv("RINGBLK_SEED"); env != "" {
			v, err := strconv.ParseUint(env, 0, 64)
			if err != nil {
				t.Fatalf("uringtest: RINGBLK_SEED=%q: %v", env, err)
			}
			seed = v
		}
	}
	for seed == 0 {
		seed = rand.Uint64()
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("uringtest: seed %d; replay with -uringtest.seed=%d or RINGBLK_SEED=%d", seed, seed, seed)
		}
	})
	return seed
}

// Mmap returns size bytes of zeroed, page-aligned anonymous memory outside
// the Go heap, unmapped when the test ends. It suits I/O buffers and iovec
// targets: the ring contract forbids pointers into a Go stack, and a
// constant-size make([]byte, n) that does not escape may live on one.
func Mmap(t testing.TB, size int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatalf("uringtest: mmap %d bytes: %v", size, err)
	}
	t.Cleanup(func() {
		if err := unix.Munmap(b); err != nil {
			t.Errorf("uringtest: munmap: %v", err)
		}
	})
	return b
}
