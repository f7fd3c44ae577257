#!/usr/bin/env bash
# make run: the main job on a default image in a temporary directory.
#
#  1. creates a 256 MiB qcow2 image with `ringblk create -f qcow2` in a
#     temporary directory on a disk filesystem (not tmpfs), fills it through
#     the qcow2 driver (`ringblk bench --rw=write --bs=1M`), checks a few of
#     the written bytes with `ringblk io` and writes the file back;
#  2. runs the default benchmark — 4 KiB random reads at queue depth 32 —
#     through ringblk's block layer (front end → qcow2 node → raw file node
#     → the Context's io_uring ring) with `ringblk bench`: fio's report, and
#     fio's live status line on a terminal;
#  3. where qemu-img is installed, runs the same job side by side with
#     qemu-img bench -f qcow2 (`ringblk bench --compare`) and prints medians
#     and ratios;
#  4. where fio is installed, does the same on a raw image against fio's
#     io_uring engine (and qemu-img bench -f raw where installed);
#  5. removes the temporary files, also on failure or Ctrl-C.
#
# The side-by-side runs read the image from the page cache on every side:
# it is read once (cat) and every side runs with --invalidate=0. With fio's
# default invalidate=1 each side would start cold from a shared disk, and
# fio (which also advises the kernel that random reads are random, turning
# readahead off) would read from the disk for its whole run while ringblk's
# reads warm the cache: a ratio about the disk and readahead, not about
# the I/O path.
#
# RINGBLK_RUN_SECONDS (default 4) sets each run's length; with the default
# the whole job takes about a minute.
set -euo pipefail
bin=${1:-bin/ringblk}
secs=${RINGBLK_RUN_SECONDS:-4}
case "$secs" in
'' | *[!0-9]* | 0)
	echo "run.sh: RINGBLK_RUN_SECONDS must be a whole number of seconds (1 or more), not '$secs'" >&2
	exit 1
	;;
esac
if [ ! -x "$bin" ]; then
	echo "run.sh: $bin is not an executable (run 'make build' first)" >&2
	exit 1
fi
base=${TMPDIR:-/var/tmp}
case "$(df --output=fstype "$base" 2>/dev/null | tail -n 1)" in
tmpfs | ramfs | "") base=/var/tmp ;;
esac
dir=$(mktemp -d "$base/ringblk-run.XXXXXX")
trap 'rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
qcow=$dir/disk.qcow2
size=256M

# Lines of a fio report worth keeping for a fill: its summary line.
summary() { grep -E '^ *(READ|WRITE):' || true; }

echo "ringblk run: working in $dir (removed at the end)"
echo
echo "== 1. a $size qcow2 image, filled through the qcow2 driver"
"$bin" create -f qcow2 "$qcow" "$size"
"$bin" bench --eta=never --name=fill --filename="$qcow" --format=qcow2 \
	--ioengine=ringblk --rw=write --bs=1M --iodepth=8 | summary
"$bin" io -f qcow2 -r -c 'read -v 0 32' -c 'length' -c 'map' "$qcow"
# Write it back now, so the runs do not compete with the page cache flushing it.
sync "$qcow"

job=(--ioengine=ringblk --rw=randread --bs=4k --iodepth=32 --runtime="$secs" --time_based)

echo
echo "== 2. the default job through the qcow2 driver (ringblk bench ${job[*]})"
"$bin" bench --name=randread-qcow2 --filename="$qcow" --format=qcow2 "${job[@]}"

echo
if command -v qemu-img >/dev/null 2>&1; then
	echo "== 3. side by side on the qcow2 image: ringblk and qemu-img bench -f qcow2"
	cat "$qcow" >/dev/null
	"$bin" bench --compare --repeats=2 --compare-with=ringblk,qemu-io_uring \
		--name=randread-qcow2 --filename="$qcow" --invalidate=0 \
		--rw=randread --bs=4k --iodepth=32 --runtime="$secs" --time_based
else
	echo "== 3. skipped: qemu-img is not installed (make deps installs qemu-utils)"
fi

echo
if command -v fio >/dev/null 2>&1; then
	raw=$dir/disk.raw
	echo "== 4. side by side on a $size raw image: ringblk, fio (io_uring) and qemu-img bench"
	"$bin" create -q -f raw "$raw" "$size"
	"$bin" bench --eta=never --name=fill --filename="$raw" --format=raw \
		--ioengine=ringblk --rw=write --bs=1M --iodepth=8 --size="$size" | summary
	sync "$raw"
	cat "$raw" >/dev/null
	"$bin" bench --compare --repeats=2 --compare-with=ringblk,fio-io_uring,qemu-io_uring \
		--name=randread-raw --filename="$raw" --invalidate=0 \
		--rw=randread --bs=4k --iodepth=32 --runtime="$secs" --time_based
else
	echo "== 4. skipped: fio is not installed (make deps installs it)"
fi

echo
echo "ringblk run: done; removing $dir"
