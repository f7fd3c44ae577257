#!/usr/bin/env bash
# make run: the main job on a default image in a temporary directory.
#
#  1. creates a 256 MiB raw image of random data on a disk filesystem (not
#     tmpfs) and writes it back;
#  2. runs 4 KiB random reads at queue depth 32 through ringblk's block layer
#     (front end → node → raw driver → the Context's io_uring ring) with
#     `ringblk bench`: fio's report, and fio's live status line on a terminal;
#  3. where qemu-img is installed, converts the image to qcow2 and runs the
#     same job through the qcow2 driver;
#  4. runs the job side by side (`ringblk bench --compare`) with our bare
#     ring and, where installed, fio (io_uring, libaio) and qemu-img bench,
#     and prints medians and ratios;
#  5. removes the temporary files.
#
# RINGBLK_RUN_SECONDS (default 5) sets each run's length.
set -euo pipefail
bin=${1:-bin/ringblk}
secs=${RINGBLK_RUN_SECONDS:-5}
base=${TMPDIR:-/var/tmp}
case "$(df --output=fstype "$base" | tail -n 1)" in
tmpfs | ramfs) base=/var/tmp ;;
esac
dir=$(mktemp -d "$base/ringblk-run.XXXXXX")
trap 'rm -rf "$dir"' EXIT
img=$dir/disk.img

echo "ringblk run: creating a 256 MiB raw image in $dir"
head -c 268435456 /dev/urandom >"$img"
# Write it back now, so the runs do not compete with the page cache flushing it.
sync "$img"

job=(--ioengine=ringblk --rw=randread --bs=4k --iodepth=32 --runtime="$secs" --time_based)

echo
echo "== 1. raw image through the block layer (ringblk bench ${job[*]})"
"$bin" bench --name=randread-raw --filename="$img" "${job[@]}"

if command -v qemu-img >/dev/null 2>&1; then
	echo
	echo "== 2. the same image as qcow2 (qemu-img convert -O qcow2), through the qcow2 driver"
	qemu-img convert -O qcow2 "$img" "$dir/disk.qcow2"
	"$bin" bench --name=randread-qcow2 --filename="$dir/disk.qcow2" "${job[@]}"
else
	echo
	echo "== 2. skipped: qemu-img is not installed to make a qcow2 copy (make deps installs qemu-utils)"
fi

echo
echo "== 3. side by side: ringblk, our bare ring, and fio / qemu-img bench where installed"
"$bin" bench --compare --repeats=2 --name=randread --filename="$img" \
	--rw=randread --bs=4k --iodepth=32 --runtime="$secs" --time_based
