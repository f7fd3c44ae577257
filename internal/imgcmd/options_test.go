package imgcmd

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/internal/cli/clitest"
)

// TestQcow2OptionListsAgreeWithQemu: create, measure and amend read qcow2
// -o lists the way qemu-img 7.2 does (format.ParseOptions, one parser for
// the three). Each list below is one on which the three commands' own
// parsers disagreed with each other or with qemu-img: the exit status
// must be qemu-img's, a created image must be byte-identical to qemu-img
// create's with the same "Formatting" line, and measure must print the
// same sizes.
func TestQcow2OptionListsAgreeWithQemu(t *testing.T) {
	clitest.NeedQemu(t)
	t.Chdir(t.TempDir())
	clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "a,b.raw", "1M")

	create := [][]string{
		{"-o", "lazy_refcounts"},            // bare key: on (amend took it, create refused it)
		{"-o", "nolazy_refcounts"},          // noKEY: off
		{"-o", "extended_l2=yes"},           // QEMU booleans: yes, true, y
		{"-o", "extended_l2"},               // bare boolean
		{"-o", "refcount_bits=0x10"},        // C numbers (amend read sizes, create decimals)
		{"-o", "refcount_bits=010"},         // octal 8
		{"-o", "refcount_bits=1k"},          // not a number (amend took 1024)
		{"-o", "cluster_size=0.5k"},         // fractions with a unit
		{"-o", "cluster_size=64kB"},         // one-letter units only
		{"-o", "cluster_size=4k,"},          // an empty item is an error (create skipped it)
		{"-o", "cluster_size=4k", "-o", ""}, // so is an empty -o
		{"-o", "compression_type=zstd"},     // zstd images can be created
		{"-o", "compat=0.10,compression_type=zlib"},
		{"-o", "compat=0.10,compression_type=zstd"},
		{"-o", "compat=1.0,compat=1.1"}, // an overridden value is read but not checked
		{"-o", "preallocation=bogus,preallocation=off"},
		{"-o", "cluster_size=1000,cluster_size=4k"},
		{"-o", "lazy_refcounts=maybe,lazy_refcounts=on"},
		{"-b", "a,b.raw", "-F", "raw"}, // a comma in -b is not a list separator
		{"-o", "backing_file=a,,b.raw,backing_fmt=raw"},
	}
	for i, c := range create {
		theirs, mine := "q"+string(rune('a'+i))+".qcow2", "o"+string(rune('a'+i))+".qcow2"
		args := append([]string{"-f", "qcow2"}, c...)
		qout, qcode := clitest.Qemu(t, "qemu-img", append(append([]string{"create"}, args...), theirs, "1M")...)
		out, errs, code := clitest.Ours(Create, append(append([]string{}, args...), mine, "1M")...)
		if code != qcode {
			t.Errorf("create %q: exit %d (%s); qemu-img: exit %d", c, code, strings.TrimSpace(errs), qcode)
			continue
		}
		if code != 0 {
			continue
		}
		if want := strings.ReplaceAll(qout, theirs, mine); out != want {
			t.Errorf("create %q prints\n%s qemu-img prints\n%s", c, out, want)
		}
		wb, _ := os.ReadFile(theirs)
		gb, _ := os.ReadFile(mine)
		if !bytes.Equal(wb, gb) {
			t.Errorf("create %q: image bytes differ from qemu-img's", c)
		}
	}

	measure := [][]string{
		{"-o", "lazy_refcounts=1"},  // measure did not read it; qemu-img refuses it
		{"-o", "lazy_refcounts"},    // bare key
		{"-o", "extended_l2=yes"},   // QEMU booleans
		{"-o", "size=1M"},           // a creation key measure ignores
		{"-o", "data_file=x.raw"},   // likewise
		{"-o", "cluster_size=0.5k"}, // fractions
		{"-o", "cluster_size=64kB"},
		{"-o", "refcount_bits=0x10"},
		{"-o", "compat=0.10,lazy_refcounts=on"}, // measure does not check this pair
	}
	for _, c := range measure {
		args := append([]string{"-O", "qcow2", "--size", "1G"}, c...)
		qout, qcode := clitest.Qemu(t, "qemu-img", append([]string{"measure"}, args...)...)
		out, errs, code := clitest.Ours(Measure, args...)
		if code != qcode || code == 0 && out != qout {
			t.Errorf("measure %q: exit %d %q (%s); qemu-img: exit %d %q", c, code, out, strings.TrimSpace(errs), qcode, qout)
		}
	}

	amend := [][]string{
		{"-o", "nolazy_refcounts"},     // noKEY: off
		{"-o", "lazy_refcounts=true"},  // QEMU booleans
		{"-o", "size=1.5M"},            // fractions
		{"-o", "refcount_bits=0x10"},   // C numbers
		{"-o", "lazy_refcounts=on,,x"}, // ",," is a comma in the value
	}
	for i, c := range amend {
		theirs, mine := "aq"+string(rune('a'+i))+".qcow2", "ao"+string(rune('a'+i))+".qcow2"
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", theirs, "1M")
		clitest.MustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", mine, "1M")
		_, qcode := clitest.Qemu(t, "qemu-img", append(append([]string{"amend"}, c...), theirs)...)
		_, errs, code := clitest.Ours(Amend, append(append([]string{}, c...), mine)...)
		if code != qcode {
			t.Errorf("amend %q: exit %d (%s); qemu-img: exit %d", c, code, strings.TrimSpace(errs), qcode)
			continue
		}
		wb, _ := os.ReadFile(theirs)
		gb, _ := os.ReadFile(mine)
		if !bytes.Equal(wb, gb) {
			t.Errorf("amend %q: image bytes differ from qemu-img's", c)
		}
	}
}
