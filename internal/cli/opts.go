// Package cli holds what ringblk's commands share, so each behaves like
// the others: one option parser (getopt_long's rules, ParseOpts), qemu-img's
// conventions for a mistake (one "ringblk: …" line, exit 1) and for help
// (stdout, exit 0) in Run, the wording of errors for a user (PlainErr,
// OpenError), qemu-img's -p progress line, the version line, and opening
// an image through drivers/chain for a command (OpenBlk).
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/ringblk/ringblk/drivers/raw"
)

// UsageError is a command-line mistake: reported in one line, exit 1.
type UsageError struct {
	Msg    string
	getopt bool // found by ParseOpts: qemu-img adds its "Try" hint
}

func (e *UsageError) Error() string { return e.Msg }

// Usagef is a UsageError with a formatted message.
func Usagef(format string, a ...any) error { return &UsageError{Msg: fmt.Sprintf(format, a...)} }

// getoptf is a UsageError of the option parser itself (getopt's words).
func getoptf(format string, a ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, a...), getopt: true}
}

// HintError is an error followed by a hint of its own (as qemu-img
// appends hints): in drop-in mode Run prints Hint as it is (with its own
// newline, or none, as qemu-img's hints) after the message line; as
// ringblk, in parentheses on the message's line.
type HintError struct {
	Err  error
	Hint string
}

func (e *HintError) Error() string { return e.Err.Error() }
func (e *HintError) Unwrap() error { return e.Err }

// ErrHelp asks the caller to print the command's help and exit 0.
var ErrHelp = errors.New("help requested")

// OptSpec describes one command's options: short letters and long names,
// each either a flag or taking a value. Every ringblk command reads its
// command line with ParseOpts and an OptSpec, and so does the qemu-io
// interpreter for each of its commands (Letters).
//
// -h, --help and -help ask for help (ErrHelp) when Short has 'h'. With
// Long nil an argument "--x" is letters, as getopt (not getopt_long) reads
// it: '-' is then an invalid option.
type OptSpec struct {
	Short map[byte]bool   // letter → takes a value
	Long  map[string]bool // name → takes a value
}

// Letters is the OptSpec of a getopt option string: "P:qv" is -P with a
// value and the flags -q and -v. It has no long options and no help.
func Letters(getopt string) OptSpec {
	spec := OptSpec{Short: map[byte]bool{}}
	for i := 0; i < len(getopt); i++ {
		if c := getopt[i]; c != ':' {
			spec.Short[c] = i+1 < len(getopt) && getopt[i+1] == ':'
		}
	}
	return spec
}

// Opt is one option as given: its letter or long name, and its value.
type Opt struct {
	Name string // "f", "o", "output", …
	Val  string
}

// ParseOpts splits args into options (in order) and operands, the way
// qemu-img's getopt_long does: "-fqcow2", "-f qcow2", "--output=json",
// "--output json", a long name shortened to a unique prefix ("--out"),
// grouped flags "-qU", operands before options, and "--" ending the
// options. A mistake is a *UsageError worded as getopt's, or, in drop-in
// mode as qemu-img, in qemu-img's own words (qemuImgGetopt).
func ParseOpts(args []string, spec OptSpec) (opts []Opt, operands []string, err error) {
	_, help := spec.Short['h']
	// What qemu-img names in a mistake: the argument getopt stopped in,
	// or the one before it in getopt's permuted order.
	qw := qemuImgGetopt()
	prev, lastOperand := Command, ""
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return opts, append(operands, args[i+1:]...), nil
		case help && (a == "-h" || a == "--help" || a == "-help"):
			return nil, nil, ErrHelp
		case spec.Long != nil && strings.HasPrefix(a, "--"):
			name, val, has := strings.Cut(a[2:], "=")
			full, found := longName(spec, name)
			switch {
			case qw && len(found) != 1:
				return nil, nil, getoptf("unrecognized option '%s'", a)
			case len(found) == 0:
				return nil, nil, getoptf("unrecognized option '%s'", a)
			case len(found) > 1:
				return nil, nil, getoptf("option '%s' is ambiguous; possibilities: '--%s'", a, strings.Join(found, "' '--"))
			}
			name = full
			takes := spec.Long[name]
			if takes && !has {
				if i+1 >= len(args) {
					if qw {
						return nil, nil, getoptf("missing argument for option '%s'", a)
					}
					return nil, nil, getoptf("option '--%s' requires an argument", name)
				}
				i++
				val = args[i]
			} else if !takes && has {
				if qw {
					return nil, nil, getoptf("unrecognized option '%s'", a)
				}
				return nil, nil, getoptf("option '--%s' doesn't allow an argument", name)
			}
			opts = append(opts, Opt{Name: name, Val: val})
		case len(a) > 1 && a[0] == '-':
			for j := 1; j < len(a); j++ {
				c := a[j]
				takes, ok := spec.Short[c]
				if !ok {
					if !qw {
						return nil, nil, getoptf("invalid option -- '%c'", c)
					}
					// getopt has moved past a only when c is its last
					// letter; otherwise the argument before it, where the
					// operands seen so far have been moved.
					at := a
					if j+1 < len(a) {
						at = prev
						if lastOperand != "" {
							at = lastOperand
						}
					}
					return nil, nil, getoptf("unrecognized option '%s'", at)
				}
				if !takes {
					opts = append(opts, Opt{Name: string(c)})
					continue
				}
				val := a[j+1:]
				if val == "" {
					if i+1 >= len(args) {
						if qw {
							return nil, nil, getoptf("missing argument for option '%s'", a)
						}
						return nil, nil, getoptf("option requires an argument -- '%c'", c)
					}
					i++
					val = args[i]
				}
				opts = append(opts, Opt{Name: string(c), Val: val})
				break
			}
		default:
			operands = append(operands, a)
			lastOperand = a
		}
		prev = args[i]
	}
	return opts, operands, nil
}

// longName resolves a long option as given to its full name: the name
// itself, or the only long name it is a prefix of (getopt_long accepts
// abbreviations). found lists the candidates: none or several is a
// mistake.
func longName(spec OptSpec, name string) (full string, found []string) {
	if _, ok := spec.Long[name]; ok {
		return name, []string{name}
	}
	for l := range spec.Long {
		if name != "" && strings.HasPrefix(l, name) {
			found = append(found, l)
		}
	}
	slices.Sort(found)
	if len(found) == 1 {
		return found[0], found
	}
	return "", found
}

// Command is the qemu-img subcommand being run in drop-in mode ("info"):
// qemu-img's getopt sees it as argv[0], and names it in some mistakes.
var Command string

// qemuImgGetopt tells whether ParseOpts words its mistakes as qemu-img
// 7.2 does: run as qemu-img, whose commands give getopt an option string
// starting with ':' and print "unrecognized option 'ARG'" and "missing
// argument for option 'ARG'" themselves. measure is the exception: its
// getopt prints its own words.
func qemuImgGetopt() bool {
	return Prog == "qemu-img" && Command != "measure"
}

// Run runs one image command body and turns its error into qemu-img's
// conventions: help on stdout (exit 0), "ringblk: …" (Prog) on stderr (exit 1).
func Run(help string, stdout, stderr io.Writer, body func() (int, error)) int {
	// A command's --object definitions are its own command line's (one
	// process per command; tests run several in one process).
	resetObjects()
	code, err := body()
	if err == nil {
		return code
	}
	if errors.Is(err, ErrHelp) {
		fmt.Fprint(stdout, help)
		return 0
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	var he *HintError
	hint := errors.As(err, &he) && he.Hint != ""
	if !hint {
		var q string
		if msg, q = SplitLockHint(msg, err); q != "" {
			he, hint = &HintError{Err: err, Hint: q}, true
		}
	}
	if hint && Prog == "ringblk" {
		// ringblk's own convention: one line per mistake.
		msg += " (" + strings.TrimSpace(he.Hint) + ")"
		hint = false
	}
	fmt.Fprintf(stderr, "%s: %s\n", Prog, msg)
	if hint {
		fmt.Fprint(stderr, he.Hint)
	}
	var ue *UsageError
	if Prog == "qemu-img" && errors.As(err, &ue) && ue.getopt {
		// qemu-img follows an option its getopt rejects with this hint.
		fmt.Fprintln(stderr, "Try 'qemu-img --help' for more information")
	}
	if code == 0 {
		code = 1
	}
	return code
}

// SplitLockHint words a lock conflict in msg (err's message) as QEMU
// prints it in drop-in mode: the sentence in the message, and the
// question "Is another process using the image [PATH]?" as a hint line
// of its own (with its newline). As ringblk, or without a lock conflict,
// msg is returned as it is and the hint is "".
func SplitLockHint(msg string, err error) (string, string) {
	var le *raw.LockError
	if Prog == "ringblk" || !errors.As(err, &le) || !strings.Contains(msg, le.Error()) {
		return msg, ""
	}
	return strings.Replace(msg, le.Error(), le.Sentence(), 1), le.Question() + "\n"
}

// UnwrapPathErr words a path error as qemu-img does: the errno text
// with a capital letter, without the operation and path.
func UnwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		if errno, ok := pe.Err.(syscall.Errno); ok {
			// qemu-img spells errno strings with a capital letter.
			s := errno.Error()
			return errors.New(strings.ToUpper(s[:1]) + s[1:])
		}
		return pe.Err
	}
	return err
}
