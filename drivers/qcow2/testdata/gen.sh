#!/usr/bin/env bash
# Regenerates the qcow2 test images in this directory with qemu-img/qemu-io
# (written for 7.2). Each image NAME is stored as:
#   NAME.qcow2.gz   the image, gzip -n (mostly zeros, so a few KiB)
#   NAME.map.json   `qemu-img map --output=json` of the image
#   NAME.raw.sha256 sha256 of `qemu-img convert -O raw` (the guest content)
# The Go tests compare ReadImage/Map/ReadAt against the last two, so the
# expected results come from QEMU, not from our code. Run from anywhere:
#   drivers/qcow2/testdata/gen.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

io() { # io IMG CMD...  (one qemu-io invocation per command list)
	local img=$1; shift
	local args=()
	for c in "$@"; do args+=(-c "$c"); done
	qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null
}

# Standard patterns shared by several images: full clusters, a partial
# cluster, a discard, zero writes: on v3 a whole-cluster -z over allocated
# data keeps the host cluster (zero-alloc), a partial one writes zeros.
std_ops=(
	'write -P 0xab 0 64k'
	'write -P 0xcd 100k 4k'
	'write -P 0x22 1M 128k'
	'discard 1M 64k'
	'write -z 2M 64k'
	'write -P 0x11 3M 128k'
	'write -z 3M 64k'
	'write -z 3136k 32k'
)

qemu-img create -q -f qcow2 v3.qcow2 4M
io v3.qcow2 "${std_ops[@]}"

qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M
io v2.qcow2 "${std_ops[@]}"

# 512-byte clusters: one L2 table maps 32 KiB, so 31k+2k crosses an L2
# boundary, and the 1 MiB disk needs 32 L1 entries.
qemu-img create -q -f qcow2 -o cluster_size=512 c512.qcow2 1M
io c512.qcow2 'write -P 0x22 0 512' 'write -P 0x11 31k 2k' 'write -z 40k 1k' 'write -P 0x33 1000k 24k'

# 2 MiB clusters (the file is sparse; gzip keeps it small).
qemu-img create -q -f qcow2 -o cluster_size=2M c2m.qcow2 8M
io c2m.qcow2 'write -P 0xab 0 64k' 'write -P 0xcd 5M 4k'

qemu-img create -q -f qcow2 -o refcount_bits=1 rc1.qcow2 4M
io rc1.qcow2 'write -P 0x33 0 64k' 'write -P 0x34 256k 8k'

qemu-img create -q -f qcow2 -o refcount_bits=64 rc64.qcow2 4M
io rc64.qcow2 'write -P 0x44 64k 64k'

qemu-img create -q -f qcow2 -o lazy_refcounts=on lazy.qcow2 4M
io lazy.qcow2 'write -P 0x45 0 128k'

# Extended L2 with 64 KiB clusters: 2 KiB subclusters (qcow2.md §1.5).
qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 4M
io ext.qcow2 'write -P 0x51 0 4k' 'write -P 0x52 8k 2k' 'write -z 64k 64k' 'write -z 130k 2k' 'write -P 0x53 200k 6k'

# Backing chain: base <- ovl (relative name, explicit format).
qemu-img create -q -f qcow2 base.qcow2 4M
io base.qcow2 'write -P 0x55 0 1M'
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ovl.qcow2 4M
io ovl.qcow2 'write -P 0x66 64k 4k' 'discard 128k 64k' 'write -P 0x67 2M 64k'

# Compressed (zlib) by convert -c, from a raw file with several patterns.
qemu-img create -q -f raw src.raw 1M
qemu-io -f raw -c 'write -P 0x71 0 64k' -c 'write -P 0x72 128k 4k' -c 'write -P 0x73 300k 100k' src.raw >/dev/null
qemu-img convert -c -O qcow2 src.raw comp.qcow2
rm src.raw

# zstd compression type (header and mapping only: no zstd in Go's stdlib).
qemu-img create -q -f qcow2 -o compression_type=zstd zstd.qcow2 4M
io zstd.qcow2 'write -c -P 0x77 0 64k' 'write -P 0x78 64k 64k'

# Internal snapshot, then overwrite (COW of the L2 table and data).
qemu-img create -q -f qcow2 snap.qcow2 4M
io snap.qcow2 'write -P 0x88 0 64k'
qemu-img snapshot -c s1 snap.qcow2
io snap.qcow2 'write -P 0x99 0 64k'

# Persistent bitmap: autoclear bit 0 and the bitmaps extension.
qemu-img create -q -f qcow2 bitmap.qcow2 4M
qemu-img bitmap --add bitmap.qcow2 b0
io bitmap.qcow2 'write -P 0xbb 0 64k'

# The base image of the malformed-image catalogue (qcow2.md §3.2):
# header@0, reftable@0x10000, refblock@0x20000, L1@0x30000, L2@0x40000,
# data@0x50000 and 0x60000.
qemu-img create -q -f qcow2 base64m.qcow2 64M
io base64m.qcow2 'write -P 0x5a 0 128k'

for f in *.qcow2; do
	n=${f%.qcow2}
	qemu-img check -q "$f"
	qemu-img map --output=json "$f" >"$here/$n.map.json"
	qemu-img convert -O raw "$f" "$n.raw"
	sha256sum <"$n.raw" | cut -d' ' -f1 >"$here/$n.raw.sha256"
	rm "$n.raw"
	gzip -n -9 <"$f" >"$here/$n.qcow2.gz"
done
ls -l "$here"
