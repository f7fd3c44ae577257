package txn_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ringblk/ringblk/txn"
)

// rec records the calls the engine makes.
type rec struct {
	name    string
	log     *[]string
	fail    bool
	commitE error
}

func (r *rec) Prepare() error {
	*r.log = append(*r.log, "prepare "+r.name)
	if r.fail {
		return errors.New(r.name + " refused")
	}
	return nil
}
func (r *rec) Commit() error { *r.log = append(*r.log, "commit "+r.name); return r.commitE }
func (r *rec) Abort()        { *r.log = append(*r.log, "abort "+r.name) }
func (r *rec) Clean()        { *r.log = append(*r.log, "clean "+r.name) }

func TestRunCommitsAllInOrder(t *testing.T) {
	var log []string
	err := txn.Run([]txn.Action{&rec{name: "a", log: &log}, &rec{name: "b", log: &log}})
	if err != nil {
		t.Fatal(err)
	}
	want := "prepare a,prepare b,commit a,commit b,clean b,clean a"
	if got := strings.Join(log, ","); got != want {
		t.Fatalf("calls %s, want %s", got, want)
	}
}

func TestRunAbortsAllWhenOnePrepareFails(t *testing.T) {
	var log []string
	err := txn.Run([]txn.Action{&rec{name: "a", log: &log}, &rec{name: "b", log: &log, fail: true}, &rec{name: "c", log: &log}})
	var te *txn.Error
	if !errors.As(err, &te) || te.Index != 1 || !strings.Contains(err.Error(), "b refused") {
		t.Fatalf("error %v, want action 1's", err)
	}
	// The failing action is aborted and cleaned too (its Prepare may have
	// done part of its work); c never prepared, so it sees nothing.
	want := "prepare a,prepare b,abort b,abort a,clean b,clean a"
	if got := strings.Join(log, ","); got != want {
		t.Fatalf("calls %s, want %s", got, want)
	}
}

func TestRunReportsCommitErrorsButCommitsTheRest(t *testing.T) {
	var log []string
	err := txn.Run([]txn.Action{&rec{name: "a", log: &log, commitE: fmt.Errorf("disk gone")}, &rec{name: "b", log: &log}})
	var ce *txn.CommitError
	if !errors.As(err, &ce) || len(ce.Errs) != 1 {
		t.Fatalf("error %v, want one commit error", err)
	}
	want := "prepare a,prepare b,commit a,commit b,clean b,clean a"
	if got := strings.Join(log, ","); got != want {
		t.Fatalf("calls %s, want %s", got, want)
	}
}

func TestRunEmpty(t *testing.T) {
	if err := txn.Run(nil); err != nil {
		t.Fatal(err)
	}
}
