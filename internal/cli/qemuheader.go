package cli

import (
	"strings"

	"github.com/ringblk/ringblk/drivers/qcow2/format"
)

// qemuHeaderWording is QEMU 7.2's sentence for a qcow2 header field its
// open refuses (qcow2_do_open, qcow2_read_extensions; iotests 054, 080),
// "" for a refusal QEMU words otherwise or does not make. ringblk's own
// message (FormatError) names the field and its value instead.
func qemuHeaderWording(fe *format.FormatError) string {
	offset := strings.HasPrefix(fe.Reason, "offset invalid")
	switch {
	case fe.Field == "header_length" && fe.Reason == "header exceeds cluster size":
		return "qcow2 header exceeds cluster size"
	case fe.Field == "backing_file_offset" && strings.HasPrefix(fe.Reason, "invalid backing file offset"):
		return "Invalid backing file offset"
	case fe.Reason == "header extension too large":
		return "Header extension too large"
	case fe.Field == "backing_file_size" && fe.Reason == "backing file name too long":
		return "Backing file name too long"
	case fe.Field == "refcount_table_clusters" && fe.Reason == "reference count table too large":
		return "Reference count table too large"
	case fe.Field == "refcount_table_offset" && offset:
		return "Reference count table offset invalid"
	case fe.Field == "nb_snapshots" && fe.Reason == "snapshot table too large":
		return "Snapshot table too large"
	case fe.Field == "snapshots_offset" && offset:
		return "Snapshot table offset invalid"
	case fe.Field == "l1_size" && fe.Reason == "active L1 table too large":
		return "Active L1 table too large"
	case fe.Field == "l1_table_offset" && offset:
		return "Active L1 table offset invalid"
	case fe.Field == "l1_size" && strings.HasPrefix(fe.Reason, "image is too big"):
		return "Image is too big"
	case fe.Field == "l1_size" && strings.HasPrefix(fe.Reason, "L1 table is too small"):
		return "L1 table is too small"
	}
	return ""
}
