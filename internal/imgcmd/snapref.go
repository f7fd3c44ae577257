package imgcmd

import "github.com/ringblk/ringblk/internal/cli"

// parseSnapshotArg is parseSnapshotParam (convert_snapshot.go) for the
// commands' -l: a bad snapshot.* option is qemu-img's two lines in
// drop-in mode ("Invalid parameter …", then "Failed in parsing snapshot
// param …", iotest 178); as ringblk the one line naming the option.
func parseSnapshotArg(v string) (snapshotParam, error) {
	p, err := parseSnapshotParam(v)
	if err == nil || cli.Prog == "ringblk" {
		return p, err
	}
	return p, &cli.HintError{
		Err:  cli.Usagef("%v", err),
		Hint: cli.Prog + ": Failed in parsing snapshot param '" + v + "'\n",
	}
}
