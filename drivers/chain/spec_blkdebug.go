package chain

// blkdebug in option trees: driver=blkdebug with config=, image (a child
// given as options or a filename), the filename form
// "blkdebug:CONFIG:IMAGE", QEMU's inline rules (inject-error.N.event=…,
// set-state.N.…) and the block limits options (align, max-transfer,
// opt-write-zero and max-write-zero; the discard limits are checked and
// otherwise ignored).

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/blkdebug"
)

func init() { SpecDrivers["blkdebug"] = specBlkdebug }

func specBlkdebug(b *SpecBuilder, s Spec, prefix, name string) (*block.Node, error) {
	if fn, ok := s["filename"]; ok {
		delete(s, "filename")
		// A name without the prefix is the image (as QEMU takes it).
		cfg, img := "", fn
		if rest, ok := strings.CutPrefix(fn, "blkdebug:"); ok {
			var found bool
			if cfg, img, found = strings.Cut(rest, ":"); !found {
				return nil, fmt.Errorf("Could not open '%s': blkdebug requires both config file and image path", fn)
			}
		}
		if _, given := s["config"]; !given && cfg != "" {
			s["config"] = cfg
		}
		if _, given := s["image"]; !given && img != "" {
			s["image.filename"] = img
		}
	}
	cfg := s["config"]
	delete(s, "config")
	rules, err := inlineRules(s)
	if err != nil {
		return nil, err
	}
	nopts := block.Options{Name: name, ReadOnly: b.O.ReadOnly}
	align, hasAlign, err := s.Size("align")
	if err != nil {
		return nil, err
	}
	if hasAlign && (align <= 0 || align&(align-1) != 0 || align > 1<<30) {
		return nil, fmt.Errorf("Cannot meet constraints with align %d", align)
	}
	nopts.Align = int(align)
	if !hasAlign {
		align = 1
	}
	limit := func(key string) (int64, error) {
		v, given, err := s.Size(key)
		if err != nil {
			return 0, err
		}
		delete(s, key)
		if given && (v < 0 || v > 1<<31-1 || v%align != 0) {
			return 0, fmt.Errorf("Cannot meet constraints with %s %d", key, v)
		}
		return v, nil
	}
	delete(s, "align")
	if nopts.MaxTransfer, err = limit("max-transfer"); err != nil {
		return nil, err
	}
	lim := blkdebug.Limits{Align: align, MaxTransfer: nopts.MaxTransfer}
	if lim.OptWriteZero, err = limit("opt-write-zero"); err != nil {
		return nil, err
	}
	if lim.MaxWriteZero, err = limit("max-write-zero"); err != nil {
		return nil, err
	}
	for _, k := range []string{"opt-discard", "max-discard"} {
		if _, err := limit(k); err != nil {
			return nil, err
		}
	}
	for _, k := range []string{"take-child-perms", "share-child-perms"} {
		for key := range s {
			if key == k || strings.HasPrefix(key, k+".") {
				delete(s, key)
			}
		}
	}
	child, _, err := b.Child(s, "image", prefix+"image.")
	if err != nil {
		return nil, err
	}
	if err := leftover(s, "format", "blkdebug"); err != nil {
		child.Unref()
		return nil, err
	}
	return blkdebug.NewNodeLimits(b.G, child, cfg, rules, lim, nopts)
}

// inlineRules takes QEMU's inject-error.N.KEY and set-state.N.KEY options
// out of s, in N order within each group (inject-error first, as QEMU
// reads them).
func inlineRules(s Spec) ([]blkdebug.Rule, error) {
	var rules []blkdebug.Rule
	for _, group := range []string{"inject-error", "set-state"} {
		byIndex := map[int]map[string]string{}
		for k, v := range s {
			rest, ok := strings.CutPrefix(k, group+".")
			if !ok {
				continue
			}
			idx, key, ok := strings.Cut(rest, ".")
			i, err := strconv.Atoi(idx)
			if !ok || err != nil || i < 0 {
				return nil, fmt.Errorf("Invalid parameter '%s'", k)
			}
			if byIndex[i] == nil {
				byIndex[i] = map[string]string{}
			}
			byIndex[i][key] = v
			delete(s, k)
		}
		if v, ok := s[group]; ok {
			return nil, fmt.Errorf("Invalid parameter type for '%s', expected: array (got '%s')", group, v)
		}
		idxs := make([]int, 0, len(byIndex))
		for i := range byIndex {
			idxs = append(idxs, i)
		}
		sort.Ints(idxs)
		for _, i := range idxs {
			ru, err := blkdebug.RuleFrom(group, byIndex[i])
			if err != nil {
				return nil, fmt.Errorf("%s.%d: %v", group, i, err)
			}
			rules = append(rules, ru)
		}
	}
	return rules, nil
}
