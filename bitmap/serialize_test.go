package bitmap

import "testing"

// TestSerializeBitOrder: bit i is bit i%8 of byte i/8 (the qcow2 bitmaps
// extension's order), both ways, and bits past the end are dropped.
func TestSerializeBitOrder(t *testing.T) {
	b, _ := New("b", 100*512, 512) // 100 bits
	b.SetRange(0, 512)             // bit 0
	b.SetRange(9*512, 512)         // bit 9
	b.SetRange(99*512, 512)        // bit 99
	buf := make([]byte, 16)
	if !b.SerializePart(buf, 0) {
		t.Fatal("no bit reported")
	}
	if buf[0] != 1 || buf[1] != 2 || buf[12] != 8 {
		t.Fatalf("serialized %x", buf)
	}
	c, _ := New("c", 100*512, 512)
	buf[15] = 0xff // bits 120..127: past the end
	c.DeserializePart(buf, 0)
	if !c.Get(0) || !c.Get(9*512) || !c.Get(99*512) || c.Count() != 3*512 {
		t.Fatalf("deserialized count %d", c.Count())
	}
	if b.SerializePart(make([]byte, 8), 128) {
		t.Fatal("bits past the end reported set")
	}
	c.Clear()
	c.SetBits(64, 1000)
	if c.Count() != 36*512 || !c.Get(64*512) || c.Get(63*512) {
		t.Fatalf("SetBits: count %d", c.Count())
	}
}
