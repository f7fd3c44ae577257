//go:build rbd && race

package rbd_test

const raceEnabled = true
