package cli

import (
	"strings"
	"testing"
)

// TestImageFileRBD: the image commands take a driver=rbd option tree
// (json: or --image-opts) as the rbd: name it means, and refuse a
// key-secret (an rbd: name is printed, so it cannot carry the key).
func TestImageFileRBD(t *testing.T) {
	for _, c := range []struct {
		name      string
		imageOpts bool
	}{
		{`json:{"driver":"rbd","pool":"p","image":"i","snapshot":"s","conf":"/x/ceph.conf"}`, false},
		{"driver=rbd,pool=p,image=i,snapshot=s,conf=/x/ceph.conf", true},
	} {
		file, f, err := ImageFile(c.name, "", c.imageOpts)
		if err != nil || file != "rbd:p/i@s:conf=/x/ceph.conf" || f != "raw" {
			t.Errorf("%s: %q %q %v", c.name, file, f, err)
		}
	}
	if _, _, err := ImageFile(`json:{"driver":"rbd","pool":"p","image":"i","key-secret":"s0"}`, "", false); err == nil ||
		!strings.Contains(err.Error(), "key-secret") {
		t.Errorf("key-secret: %v", err)
	}
	if _, _, err := ImageFile(`json:{"driver":"rbd","pool":"p"}`, "", false); err == nil {
		t.Error("an rbd tree without an image was taken")
	}
}
