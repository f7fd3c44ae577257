package chain

// quorum in option trees: driver=quorum with children.N (each a node's
// options or a filename), vote-threshold (required) and read-pattern
// (quorum or fifo); rewrite-corrupted and blkverify only off
// (drivers/quorum). A quorum has no one file: images above it get no
// directory for a relative backing name (Image.Path "").

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/quorum"
)

func init() { SpecDrivers["quorum"] = specQuorum }

func specQuorum(b *SpecBuilder, s Spec, prefix, name string) (*block.Node, error) {
	tv, ok := s["vote-threshold"]
	if !ok {
		return nil, fmt.Errorf("Parameter 'vote-threshold' is missing")
	}
	threshold, err := strconv.Atoi(tv)
	if err != nil {
		return nil, fmt.Errorf("Parameter 'vote-threshold' expects an integer")
	}
	delete(s, "vote-threshold")
	fifo := false
	if v, ok := s["read-pattern"]; ok {
		switch v {
		case "quorum":
		case "fifo":
			fifo = true
		default:
			return nil, fmt.Errorf("Parameter 'read-pattern' does not accept value '%s'", v)
		}
		delete(s, "read-pattern")
	}
	for _, k := range []string{"rewrite-corrupted", "blkverify"} {
		if v, given, err := s.Bool(k); err != nil {
			return nil, err
		} else if given && v {
			return nil, fmt.Errorf("ringblk's quorum does not support '%s=on'", k)
		}
		delete(s, k)
	}
	idx := map[int]bool{}
	for k := range s {
		rest, ok := strings.CutPrefix(k, "children.")
		if !ok {
			continue
		}
		i, err := strconv.Atoi(strings.SplitN(rest, ".", 2)[0])
		if err != nil || i < 0 {
			return nil, fmt.Errorf("Invalid parameter '%s'", k)
		}
		idx[i] = true
	}
	order := make([]int, 0, len(idx))
	for i := range idx {
		order = append(order, i)
	}
	sort.Ints(order)
	if len(order) == 0 {
		return nil, fmt.Errorf("Number of provided children must be 1 or more")
	}
	if threshold < 1 || threshold > len(order) {
		return nil, fmt.Errorf("threshold %d is not between 1 and the number of children (%d)", threshold, len(order))
	}
	var children []*block.Node
	fail := func(err error) (*block.Node, error) {
		for _, c := range children {
			c.Unref()
		}
		return nil, err
	}
	for _, i := range order {
		key := fmt.Sprintf("children.%d", i)
		c, _, err := b.Child(s, key, prefix+key+".")
		if err != nil {
			return fail(err)
		}
		children = append(children, c)
	}
	if err := leftover(s, "format", "quorum"); err != nil {
		return fail(err)
	}
	b.Path = "" // no one file: no directory for a backing name
	return quorum.NewNode(b.G, children, threshold, fifo, block.Options{Name: name, ReadOnly: b.O.ReadOnly})
}
