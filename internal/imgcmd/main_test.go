package imgcmd

import (
	"io"
	"os"
	"testing"

	"github.com/ringblk/ringblk/internal/cli"
	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// progEnv names the program a test binary run as ringblk calls itself.
const progEnv = "RINGBLK_TEST_PROG"

// TestMain lets clitest.RunRingblk run this test binary as a ringblk that
// has the image commands.
func TestMain(m *testing.M) {
	cmds := map[string]func([]string) int{}
	for name, f := range map[string]func([]string, io.Writer, io.Writer) int{
		"amend": Amend, "check": Check, "compare": Compare, "convert": Convert, "create": Create, "dd": DD,
		"info": Info, "map": Map, "measure": Measure, "resize": Resize, "snapshot": Snapshot,
	} {
		cmds[name] = func(args []string) int {
			cli.Command = name // as the drop-in dispatcher sets it
			return f(args, os.Stdout, os.Stderr)
		}
	}
	if p := os.Getenv(progEnv); p != "" {
		// Run as a drop-in: messages carry that program name.
		cli.Prog = p
	}
	clitest.Main(m, clitest.Dispatch(cmds))
}
