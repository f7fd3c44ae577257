package main

import (
	"os"

	"github.com/ringblk/ringblk/bench"
)

// benchMain is "ringblk bench": fio-style jobs through the block layer
// (package bench does the work).
func benchMain(args []string) int { return bench.Main(args, os.Stdout, os.Stderr) }
