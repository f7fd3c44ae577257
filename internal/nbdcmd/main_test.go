package nbdcmd

import (
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestMain lets clitest.RunRingblk (and the tests that start the server
// in the background) run this test binary as a ringblk that has nbd.
func TestMain(m *testing.M) {
	clitest.Main(m, clitest.Dispatch(map[string]func([]string) int{"nbd": Main}))
}
