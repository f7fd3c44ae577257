package aio

import (
	"errors"
	"strconv"
)

// A Set is the default arrangement: one IOThread Context per physical core,
// each pinned to a CPU of its core, plus an unpinned main Context.
type Set struct {
	Main      *Context
	IOThreads []*Context
}

// StartDefault creates and starts a Set. opts is the template for every
// Context (Name, Pin, CPU and Main are set per Context; opts.CPU == NoCPU
// turns pinning off for all: StartDefault pins unless told not to). The IOThread count is the number of physical cores
// cpuid reports, limited to the CPUs in the process's affinity mask.
func StartDefault(opts Options) (*Set, error) {
	s := &Set{}
	pin := opts.CPU != NoCPU
	mo := opts
	mo.Name, mo.Main, mo.Pin, mo.CPU, mo.Queue = "main", true, false, NoCPU, nil
	m, err := New(mo)
	if err != nil {
		return nil, err
	}
	if err := m.Start(); err != nil {
		m.Stop()
		return nil, err
	}
	s.Main = m
	for i, cpu := range topo.CoreCPUs {
		o := opts
		o.Name, o.Main, o.Queue = "iothread"+strconv.Itoa(i), false, nil
		o.Pin, o.CPU = pin, NoCPU
		if pin {
			o.CPU = cpu
		}
		c, err := New(o)
		if err == nil {
			err = c.Start()
			if err != nil {
				c.Stop()
			}
		}
		if err != nil {
			s.Stop()
			return nil, err
		}
		s.IOThreads = append(s.IOThreads, c)
	}
	return s, nil
}

// Stop stops every IOThread, then the main Context, and returns the joined
// errors.
func (s *Set) Stop() error {
	var errs []error
	for _, c := range s.IOThreads {
		if _, err := c.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Main != nil {
		if _, err := s.Main.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
