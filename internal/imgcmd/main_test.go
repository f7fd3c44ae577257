package imgcmd

import (
	"io"
	"os"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestMain lets clitest.RunRingblk run this test binary as a ringblk that
// has the image commands.
func TestMain(m *testing.M) {
	cmds := map[string]func([]string) int{}
	for name, f := range map[string]func([]string, io.Writer, io.Writer) int{
		"amend": Amend, "check": Check, "compare": Compare, "convert": Convert, "create": Create,
		"info": Info, "map": Map, "measure": Measure, "resize": Resize, "snapshot": Snapshot,
	} {
		cmds[name] = func(args []string) int { return f(args, os.Stdout, os.Stderr) }
	}
	clitest.Main(m, clitest.Dispatch(cmds))
}
