package format

import (
	"errors"
	"strconv"
	"strings"
)

// QemuCorruptionText is QEMU's wording of the corruption a request ran
// into, the text of its "Marking image as corrupt: …" line, for the
// causes this package words as QEMU does; "" for the others.
func QemuCorruptionText(err error) string {
	if t := l2EntryCorruptionText(err); t != "" { // extl2.go
		return t
	}
	if t := untrustedAllocText(err); t != "" { // untrusted.go
		return t
	}
	var ue *RefblockUnalignedError
	if errors.As(err, &ue) {
		return refblockUnalignedText(ue.Index, ue.Offset)
	}
	var fe *FormatError
	if errors.As(err, &fe) && fe.Reason == "refcount block offset not cluster aligned" {
		// Field is "refcount_table[i] refcount_table_entry" (RTDamage).
		if rest, ok := strings.CutPrefix(fe.Field, "refcount_table["); ok {
			if j := strings.IndexByte(rest, ']'); j > 0 {
				if i, err := strconv.ParseInt(rest[:j], 10, 64); err == nil {
					return refblockUnalignedText(i, int64(fe.Value&^ReftableReserved))
				}
			}
		}
	}
	return ""
}

func refblockUnalignedText(index, off int64) string {
	return "Refblock offset 0x" + strconv.FormatInt(off, 16) + " unaligned (reftable index: " + cHex(index) + ")"
}
