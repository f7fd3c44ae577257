package qmp

import (
	"testing"
)

// TestSetIOThrottleValidity: block-set-io-throttle refuses what QEMU
// 7.2's throttle_is_valid refuses, in its words and order, and the QAPI
// type errors of its integer members; valid limits apply. Seen side by
// side with qemu-storage-daemon (object-add throttle-group runs the same
// check): a fractional or huge rate was taken as a float (0.5 bytes/s, a
// wait that overflowed), and bursts without a rate, bursts below the
// rate, zero or oversized burst lengths and iops_size without iops were
// all accepted.
func TestSetIOThrottleValidity(t *testing.T) {
	d, dir, sock := testServer(t, 1, Options{})
	addQcow2(t, d, dir, "disk0")
	c := dialRaw(t, sock)
	c.negotiate()
	const base = `"device":"disk0","bps_rd":0,"bps_wr":0,"iops_rd":0,"iops_wr":0`
	for _, x := range []struct{ args, desc string }{
		{`"bps":0.5,"iops":0`, "Invalid parameter type for 'bps', expected: integer"},
		{`"bps":0,"iops":2e15`, "Invalid parameter type for 'iops', expected: integer"},
		{`"bps":0,"iops":1,"iops_max":1.5`, "Invalid parameter type for 'iops_max', expected: integer"},
		{`"bps":-1,"iops":0`, "bps/iops/max values must be within [0, 1000000000000000]"},
		{`"bps":1000000000000001,"iops":0`, "bps/iops/max values must be within [0, 1000000000000000]"},
		{`"bps":0,"iops":0,"iops_max":-1`, "bps/iops/max values must be within [0, 1000000000000000]"},
		{`"bps":0,"iops":0,"iops_max":100`, "bps_max/iops_max require corresponding bps/iops values"},
		{`"bps":0,"iops":100,"iops_max":30`, "bps_max/iops_max cannot be lower than bps/iops"},
		{`"bps":10,"iops":0,"bps_max_length":0`, "the burst length cannot be 0"},
		{`"bps":10,"iops":0,"bps_max_length":2`, "burst length set without burst rate"},
		{`"bps":10,"iops":0,"bps_max_length":-1`, "burst length set without burst rate"},
		{`"bps":0,"iops":1,"iops_max":1000000000000000,"iops_max_length":2`, "burst length too high for this burst rate"},
		{`"bps":0,"iops":0,"iops_size":4096`, "iops size requires an iops value to be set"},
		{`"bps":1,"iops":0,"bps_max":2,"bps_wr_max":3`, "bps/iops/max total values and read/write values cannot be used at the same time"},
	} {
		wantError(t, c.do(`{"execute":"block-set-io-throttle","arguments":{`+base+`,`+x.args+`}}`), GenericError, x.desc)
	}
	for _, args := range []string{
		`"bps":1,"iops":0,"bps_max":1000000000000000,"bps_max_length":1`,
		`"bps":0,"iops":1,"iops_max":2,"iops_max_length":500000000000000`,
		`"bps":1000000000000000,"iops":1000000000000000`,
		`"bps":0,"iops":100,"iops_size":4096`,
		`"bps":0,"iops":0`,
	} {
		if r := c.do(`{"execute":"block-set-io-throttle","arguments":{` + base + `,` + args + `}}`); r["return"] == nil {
			t.Fatalf("%s: %v", args, r)
		}
	}
}
