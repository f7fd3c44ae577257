package chain

// rbd in option trees: driver=rbd with pool, namespace, image, snapshot,
// conf, user, keyring, timeout, server.N.host/port (rbd.FromOptions), and
// key-secret naming a secret object (--object secret,id=…) whose data is
// the cephx key, as QEMU takes it; or filename=rbd:… (rbd.ParseName). A
// ringblk built without the rbd tag fails here with rbd.ErrNotBuilt.

import (
	"fmt"

	"github.com/ringblk/ringblk/block"
	"github.com/ringblk/ringblk/drivers/rbd"
)

func init() { SpecDrivers["rbd"] = specRBD }

func specRBD(b *SpecBuilder, s Spec, _, name string) (*block.Node, error) {
	var rs rbd.Spec
	if fn, ok := s["filename"]; ok {
		if len(s) != 1 {
			return nil, fmt.Errorf("Cannot combine an rbd: filename with other rbd options")
		}
		var err error
		if rs, err = rbd.ParseName(fn); err != nil {
			return nil, err
		}
	} else {
		o := map[string]string{}
		for k, v := range s {
			o[k] = v
		}
		if id, ok := o["key-secret"]; ok {
			key, err := b.secret(id)
			if err != nil {
				return nil, err
			}
			o["key-secret"] = string(key)
		}
		var err error
		if rs, err = rbd.FromOptions(o); err != nil {
			return nil, err
		}
	}
	if b.Path == "" {
		b.Path = rs.String()
	}
	rs.Cache = RBDCache(b.O.Cache)
	return rbd.NewNode(b.G, rs, b.O.ReadOnly, block.Options{Name: name})
}
