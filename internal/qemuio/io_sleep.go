package qemuio

// qemu-io's sleep command: waits the given milliseconds while the
// image's requests (aio_write, aio_read) go on in their Contexts.

import (
	"fmt"
	"sort"
	"strconv"
	"time"
)

// sleepLimit bounds sleep (a script's typo must not hang a test run).
const sleepLimit = 10 * time.Minute

var sleepCmd = &ioCommand{
	name: "sleep", argmin: 1, argmax: 1, args: "milliseconds",
	oneline: "waits for the given value in milliseconds",
	run: func(s *ioSession, argv []string) bool {
		ms, err := strconv.ParseInt(argv[1], 0, 64)
		if err != nil || ms < 0 || time.Duration(ms)*time.Millisecond > sleepLimit {
			fmt.Fprintf(s.out, "%s is not a valid number\n", argv[1])
			return false
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		s.dbgMsgs.print(s.out)
		s.aioReportFinished()
		return true
	},
}

func init() {
	ioCommands = append(ioCommands, sleepCmd)
	sort.Slice(ioCommands, func(i, j int) bool { return ioCommands[i].name < ioCommands[j].name })
}
