#!/usr/bin/env bash
# make run: the main job on a default image in a temporary directory.
# Creates a 256 MiB image of random data on a disk filesystem (not tmpfs),
# runs 4 KiB random reads at queue depth 32 through ringblk's ring, buffered
# and O_DIRECT, then — where fio is installed — the same job with fio's
# io_uring engine, prints both and the ratio, and removes the image.
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

echo "ringblk run: creating a 256 MiB image in $dir"
head -c 268435456 /dev/urandom >"$img"
# Write the image back now, so the O_DIRECT run does not compete with the
# page cache flushing it.
sync "$img"

for mode in buffered direct; do
	flag=""
	[ "$mode" = direct ] && flag="-direct"
	echo
	echo "== ringblk ring, 4k randread, QD32, $mode, ${secs}s"
	"$bin" ring-bench -file "$img" -qd 32 -runtime "${secs}s" $flag
done

if ! command -v fio >/dev/null 2>&1; then
	echo
	echo "fio is not installed: no side-by-side ratio (make deps installs it)"
	exit 0
fi
echo
echo "== side by side: fio --ioengine=io_uring with its default settings, same file and job, ${secs}s each"
printf '%-10s %14s %14s %8s\n' mode "ringblk IOPS" "fio IOPS" ratio
for mode in buffered direct; do
	d=0
	[ "$mode" = direct ] && d=1
	fio_iops=$(fio --name=run --filename="$img" --ioengine=io_uring --rw=randread --bs=4k \
		--iodepth=32 --direct=$d --runtime="$secs" --time_based --norandommap --randrepeat=0 \
		--invalidate=0 --output-format=json 2>/dev/null |
		python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))')
	ours_iops=$("$bin" ring-bench -file "$img" -qd 32 -runtime "${secs}s" -verify 0 $( [ $d = 1 ] && echo -direct ) -json |
		python3 -c 'import json,sys; print(int(json.load(sys.stdin)["iops"]))')
	python3 -c "import sys; o,f=$ours_iops,$fio_iops; print(f'%-10s %14d %14d %8.2f' % ('$mode', o, f, o/f if f else 0))"
done
