//go:build ignore

// Command jsonkeys compares the key sets of two fio JSON reports (fio's and
// ringblk bench's for the same job): it prints the key paths only one of
// them has and exits 1 when they differ. Values are ignored; array
// elements are compared position by position (jobs, disk_util), except
// arrays of scalars, whose length is a value.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: jsonkeys fio.json ringblk.json")
		os.Exit(2)
	}
	a, err := keys(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	b, err := keys(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var diff []string
	for k := range a {
		if !b[k] {
			diff = append(diff, "only fio:     "+k)
		}
	}
	for k := range b {
		if !a[k] {
			diff = append(diff, "only ringblk: "+k)
		}
	}
	sort.Strings(diff)
	for _, d := range diff {
		fmt.Println(d)
	}
	if len(diff) > 0 {
		os.Exit(1)
	}
}

func keys(path string) (map[string]bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// fio may print notes before the JSON object.
	for i, c := range data {
		if c == '{' {
			data = data[i:]
			break
		}
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]bool{}
	walk("", v, out)
	return out, nil
}

// volatile holds objects whose keys are values (fio's latency percentile
// and histogram bins, which depend on the latencies measured).
var volatile = map[string]bool{"bins": true}

// countedArrays are arrays whose length is a measured value: "prios" has
// an element per I/O priority that saw I/O, so its elements are compared
// as one shape, not position by position.
var countedArrays = map[string]bool{"prios": true}

func walk(prefix string, v any, out map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			p := prefix + "." + k
			out[p] = true
			if volatile[k] {
				continue
			}
			walk(p, e, out)
		}
	case []any:
		counted := countedArrays[prefix[strings.LastIndex(prefix, ".")+1:]]
		for i, e := range x {
			if _, ok := e.(map[string]any); ok {
				idx := "[" + strconv.Itoa(i) + "]"
				if counted {
					idx = "[]"
				}
				walk(prefix+idx, e, out)
			}
		}
	}
}
