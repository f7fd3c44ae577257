package chain

// LUKS in option trees: the luks format driver (key-secret=), a qcow2
// image's encrypt.key-secret= and its backing files' (backing.…), looked
// up through Options.Secret.

import (
	"fmt"
	"strings"

	"github.com/ringblk/ringblk/block"
	luksdrv "github.com/ringblk/ringblk/drivers/luks"
	"github.com/ringblk/ringblk/drivers/qcow2"
)

func (b *SpecBuilder) secret(id string) ([]byte, error) {
	if b.O.Secret == nil {
		return nil, fmt.Errorf("No secret with id '%s'", id)
	}
	return b.O.Secret(id)
}

// keySecrets takes a qcow2 node's key options out of s: encrypt.key-secret
// and encrypt.format for the image, the same under backing. (any depth)
// for its backing files, and backing.file.filename / backing.file.driver,
// which must name the backing files the images record (checked after the
// open, checkBackingFiles). secrets is nil when none is given.
func (b *SpecBuilder) keySecrets(s Spec) (secrets [][]byte, backingFiles map[int]string, err error) {
	for k, v := range s {
		rest, depth := k, 0
		for strings.HasPrefix(rest, "backing.") {
			rest = rest[len("backing."):]
			depth++
		}
		switch {
		case rest == "encrypt.key-secret":
			sec, err := b.secret(v)
			if err != nil {
				return nil, nil, err
			}
			for len(secrets) <= depth {
				secrets = append(secrets, nil)
			}
			secrets[depth] = sec
			delete(s, k)
		case rest == "encrypt.format":
			if v != "luks" && v != "aes" {
				return nil, nil, fmt.Errorf("Parameter 'encrypt.format' does not accept value '%s'", v)
			}
			delete(s, k)
		case depth > 0 && rest == "file.driver":
			if v != "file" {
				return nil, nil, fmt.Errorf("ringblk takes the backing file from the image only (option '%s')", k)
			}
			delete(s, k)
		case depth > 0 && (rest == "file.filename" || rest == "filename"):
			if backingFiles == nil {
				backingFiles = map[int]string{}
			}
			backingFiles[depth] = v
			delete(s, k)
		case depth > 1 && (rest == "driver" || rest == "node-name"):
			delete(s, k)
		}
	}
	return secrets, backingFiles, nil
}

// checkBackingFiles refuses backing file names given as options that are
// not the files the chain opened (the images' own backing names); n is
// the top qcow2 node over path.
func checkBackingFiles(path string, n *block.Node, names map[int]string) error {
	for depth, want := range names {
		p, cur := path, n
		for i := 0; i < depth; i++ {
			d, ok := cur.Driver().(*qcow2.Driver)
			var c *block.Child
			if ok {
				c = cur.Child(block.RoleBacking)
			}
			if c == nil || d.Header().BackingFile == "" {
				return fmt.Errorf("ringblk takes the backing file from the image only ('%s' is not in its backing chain)", want)
			}
			p, cur = ResolveBacking(p, d.Header().BackingFile), c.Node()
		}
		if FileID(p) != FileID(want) {
			return fmt.Errorf("ringblk takes the backing file from the image only (the options name '%s', the image's backing file is '%s')", want, p)
		}
	}
	return nil
}

// luks opens a luks format node: key-secret= and a file child.
func (b *SpecBuilder) luks(s Spec, prefix, name string) (*block.Node, *Image, error) {
	var pw []byte
	if id, ok := s["key-secret"]; ok {
		delete(s, "key-secret")
		sec, err := b.secret(id)
		if err != nil {
			return nil, nil, err
		}
		pw = sec
	} else if len(b.O.KeySecrets) > 0 {
		pw = b.O.KeySecrets[0]
	}
	child, cimg, err := b.Child(s, "file", prefix+"file.")
	if err != nil {
		return nil, nil, err
	}
	if err := leftover(s, "format", "luks"); err != nil {
		child.Unref()
		return nil, nil, err
	}
	drv := luksdrv.New(child, luksdrv.Options{Password: pw, NoIO: b.O.HeaderOnly})
	n, err := b.G.Open(drv, luksdrv.NodeOptions(block.Options{Name: name, ReadOnly: b.O.ReadOnly}))
	if err != nil {
		return nil, nil, err
	}
	return n, &Image{Path: cimg.Path, Format: "luks", Luks: drv}, nil
}
