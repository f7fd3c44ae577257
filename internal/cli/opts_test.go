package cli

import (
	"errors"
	"reflect"
	"testing"
)

// TestParseOpts: getopt_long's rules for a command's OptSpec, getopt's for
// a qemu-io command's Letters, and getopt's words for each mistake.
func TestParseOpts(t *testing.T) {
	cmd := OptSpec{
		Short: map[byte]bool{'f': true, 'q': false, 'U': false, 'h': false},
		Long:  map[string]bool{"output": true, "force-share": false, "help": false},
	}
	io := Letters("CP:qv")
	type opts = []Opt
	for _, c := range []struct {
		spec     OptSpec
		args     []string
		opts     opts
		operands []string
		err      string // "" for none; "help" for ErrHelp
	}{
		{cmd, []string{"-fqcow2", "a", "-qU", "--output=json", "--force-share"},
			opts{{"f", "qcow2"}, {"q", ""}, {"U", ""}, {"output", "json"}, {"force-share", ""}}, []string{"a"}, ""},
		{cmd, []string{"-f", "raw", "--output", "human", "--", "-q", "b"},
			opts{{"f", "raw"}, {"output", "human"}}, []string{"-q", "b"}, ""},
		{cmd, []string{"-", "a"}, nil, []string{"-", "a"}, ""},
		{cmd, []string{"a", "-h"}, nil, nil, "help"},
		{cmd, []string{"--help"}, nil, nil, "help"},
		{cmd, []string{"-help"}, nil, nil, "help"},
		{cmd, []string{"--bogus"}, nil, nil, "unrecognized option '--bogus'"},
		{cmd, []string{"--output"}, nil, nil, "option '--output' requires an argument"},
		{cmd, []string{"--force-share=1"}, nil, nil, "option '--force-share' doesn't allow an argument"},
		{cmd, []string{"-x"}, nil, nil, "invalid option -- 'x'"},
		{cmd, []string{"-qf"}, nil, nil, "option requires an argument -- 'f'"},
		{io, []string{"0", "-P", "0xab", "4k", "-qv"}, opts{{"P", "0xab"}, {"q", ""}, {"v", ""}}, []string{"0", "4k"}, ""},
		{io, []string{"-CP5", "0", "1"}, opts{{"C", ""}, {"P", "5"}}, []string{"0", "1"}, ""},
		{io, []string{"-h", "0", "1"}, nil, nil, "invalid option -- 'h'"},
		{io, []string{"--help", "0", "1"}, nil, nil, "invalid option -- '-'"},
		{io, []string{"-:", "0", "1"}, nil, nil, "invalid option -- ':'"},
		{io, []string{"0", "1", "-P"}, nil, nil, "option requires an argument -- 'P'"},
	} {
		o, ops, err := ParseOpts(c.args, c.spec)
		switch {
		case c.err == "help":
			if !errors.Is(err, ErrHelp) {
				t.Errorf("%q: err %v, want ErrHelp", c.args, err)
			}
		case c.err != "":
			var ue *UsageError
			if !errors.As(err, &ue) || ue.Msg != c.err {
				t.Errorf("%q: err %v, want usage error %q", c.args, err, c.err)
			}
		case err != nil:
			t.Errorf("%q: %v", c.args, err)
		case !reflect.DeepEqual(o, c.opts) || !reflect.DeepEqual(ops, c.operands):
			t.Errorf("%q: opts %v operands %q, want %v %q", c.args, o, ops, c.opts, c.operands)
		}
	}
}

// TestParseOptsAsQemuImg: long names shortened to a unique prefix are
// accepted (getopt_long), and in drop-in mode as qemu-img a mistake is in
// qemu-img 7.2's own words, naming the argument its getopt stopped in —
// or, when the bad letter is not the last of its argument, the argument
// before it in getopt's permuted order (the command name, or the last
// operand seen). The expected lines are qemu-img 7.2's output for
// `qemu-img info ARGS`.
func TestParseOptsAsQemuImg(t *testing.T) {
	defer func(p, c string) { Prog, Command = p, c }(Prog, Command)
	spec := OptSpec{
		Short: map[byte]bool{'f': true, 'U': false, 'h': false},
		Long:  map[string]bool{"output": true, "object": true, "force-share": false, "backing-chain": false, "help": false},
	}
	o, _, err := ParseOpts([]string{"--out=json", "--force", "--back"}, spec)
	if want := []Opt{{"output", "json"}, {"force-share", ""}, {"backing-chain", ""}}; err != nil || !reflect.DeepEqual(o, want) {
		t.Errorf("abbreviated long options: %v %v, want %v", o, err, want)
	}
	if _, _, err := ParseOpts([]string{"--o=json"}, spec); err == nil || err.Error() != "option '--o=json' is ambiguous; possibilities: '--object' '--output'" {
		t.Errorf("ambiguous --o as ringblk: %v", err)
	}
	Prog, Command = "qemu-img", "info"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-y", "a"}, "unrecognized option '-y'"},
		{[]string{"-Uy", "a"}, "unrecognized option '-Uy'"},
		{[]string{"-yU", "a"}, "unrecognized option 'info'"},
		{[]string{"a", "-f", "qcow2", "-yU"}, "unrecognized option 'a'"},
		{[]string{"-f", "qcow2", "-yU", "a"}, "unrecognized option 'qcow2'"},
		{[]string{"-f"}, "missing argument for option '-f'"},
		{[]string{"-Uf"}, "missing argument for option '-Uf'"},
		{[]string{"--output"}, "missing argument for option '--output'"},
		{[]string{"--bogus=1", "a"}, "unrecognized option '--bogus=1'"},
		{[]string{"--force-share=1", "a"}, "unrecognized option '--force-share=1'"},
		{[]string{"--o=json", "a"}, "unrecognized option '--o=json'"},
	} {
		_, _, err := ParseOpts(c.args, spec)
		var ue *UsageError
		if !errors.As(err, &ue) || ue.Msg != c.want || !ue.getopt {
			t.Errorf("qemu-img info %q: %v, want %q", c.args, err, c.want)
		}
	}
}
