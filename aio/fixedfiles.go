package aio

import "fmt"

// RegisterFiles registers files in the Context's ring (a registered-file
// table, one slot each, in order): the Context's later ops on them name
// the slot (IOSQE_FIXED_FILE), which spares the kernel a file lookup and
// reference per op (fio's registerfiles). Owner only; once per Context;
// the files must stay open while the Context runs (the table keeps the
// kernel's reference until the ring closes).
func (c *Context) RegisterFiles(files []*File) error {
	c.assertOwner("RegisterFiles")
	if len(c.fixedFiles) > 0 {
		return fmt.Errorf("aio: context %s: files already registered", c.name)
	}
	if err := c.q.RegisterFiles(len(files)); err != nil {
		return fmt.Errorf("aio: context %s: register files: %w", c.name, err)
	}
	var table []int32
	for i, f := range files {
		if err := c.q.UpdateFile(i, int(f.fd)); err != nil {
			return fmt.Errorf("aio: context %s: register file %d: %w", c.name, i, err)
		}
		for int(f.id) >= len(table) {
			table = append(table, 0)
		}
		table[f.id] = int32(i) + 1
	}
	c.fixedFiles = table
	return nil
}
