#!/usr/bin/env bash
# ringbench-vs-fio.sh — ringblk's bare io_uring ring (ringblk bench
# --ioengine=io_uring: uring.Ring, no aio or block layer) against fio's
# io_uring engine, the same job on both sides: 4 KiB uniform random reads at
# queue depth 32 over a 1 GiB file, buffered (page cache) and O_DIRECT, each
# with and without registered file + fixed buffers (--registerfiles
# --fixedbufs). Runs are interleaved over the repeats so drift on a shared
# machine hits both sides alike; the table shows medians.
#
# usage: scripts/ringbench-vs-fio.sh [-d DIR] [-t SECONDS] [-r REPEATS] [-b RINGBLK_BIN]
#   -d DIR      where the 1 GiB data file lives (default /var/tmp; never tmpfs)
#   -t SECONDS  run time of each measurement (default 5)
#   -r REPEATS  interleaved repetitions (default 3)
#   -b BIN      a built ringblk binary (default: go build ./cmd/ringblk)
#
# Needs fio (installed with apt-get when missing and run as root), python3
# and GNU time (/usr/bin/time). The data file (DIR/ringbench-1g.dat) is kept
# for the next run; remove it by hand when done.
set -euo pipefail

dir=/var/tmp
secs=5
reps=3
bin=${RINGBLK_BIN:-}
while getopts "d:t:r:b:h" opt; do
	case $opt in
	d) dir=$OPTARG ;;
	t) secs=$OPTARG ;;
	r) reps=$OPTARG ;;
	b) bin=$OPTARG ;;
	h) sed -n '2,19p' "$0"; exit 0 ;;
	*) sed -n '10,14p' "$0" >&2; exit 2 ;;
	esac
done

prog=ringbench-vs-fio
. "$(dirname "$0")/benchlib.sh"
check_runs "$secs" "$reps"
check_disk_dir "$dir"
need python3 gnu-time

if ! command -v fio >/dev/null; then
	if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
		echo "fio is missing; installing it with apt-get" >&2
		apt-get update -qq && apt-get install -y -qq fio >/dev/null || die "apt-get install fio failed"
	else
		die "fio is not installed (run as root to install it with apt-get, or install it yourself)"
	fi
fi

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$bin" ]; then
	(cd "$root" && go build -o "$work/ringblk" ./cmd/ringblk) || die "go build ./cmd/ringblk failed"
	bin=$work/ringblk
fi
[ -x "$bin" ] || die "no executable ringblk at $bin"

file=$dir/ringbench-1g.dat
size=$((1 << 30))
if [ ! -f "$file" ] || [ "$(stat -c %s "$file")" -ne "$size" ]; then
	echo "creating $file (1 GiB of random data)" >&2
	head -c "$size" /dev/urandom >"$file.tmp" && mv "$file.tmp" "$file"
fi
cat "$file" >/dev/null # warm the page cache for the buffered rows

# The job both tools run. bench waits for one completion and reaps all that
# are there, which fio does with the two iodepth_batch_complete options
# (bench does not take them).
job=(--name=randread "--filename=$file" --ioengine=io_uring --rw=randread --bs=4k --iodepth=32
	"--runtime=$secs" --time_based --norandommap --randrepeat=0 --invalidate=0 --iodepth_batch_submit=32)
fio_base=(fio "${job[@]}" --iodepth_batch_complete_min=1 --iodepth_batch_complete_max=32)
ours_base=("$bin" bench "${job[@]}")

# rows: name | extra flags (both tools)
rows=(
	"buffered|-"
	"buffered fixed|--fixedbufs --registerfiles"
	"O_DIRECT|--direct=1"
	"O_DIRECT fixed|--direct=1 --fixedbufs --registerfiles"
)

echo "# $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -r), $(nproc) CPUs, $(fio --version), $(go version 2>/dev/null | cut -d' ' -f3)"
echo "# file $file ($fstype), ${secs}s per run, $reps interleaved repeats"
echo "# ours: /usr/bin/time -f '%e %U %S' ${ours_base[*]} [flags] --output-format=json"
echo "# fio:  /usr/bin/time -f '%e %U %S' ${fio_base[*]} [flags] --output-format=json"

raw=$work/raw.tsv
for rep in $(seq 1 "$reps"); do
	for row in "${rows[@]}"; do
		IFS='|' read -r name flags <<<"$row"
		[ "$flags" = - ] && flags=
		# shellcheck disable=SC2086 # the flag list is meant to split
		/usr/bin/time -f '%e %U %S' -o "$work/ours.time" "${ours_base[@]}" $flags \
			--output-format=json --output="$work/ours.json" >/dev/null || die "ringblk bench failed ($name)"
		# shellcheck disable=SC2086
		/usr/bin/time -f '%e %U %S' -o "$work/fio.time" "${fio_base[@]}" $flags \
			--output-format=json --output="$work/fio.json" >/dev/null || die "fio failed ($name)"
		python3 - "$name" "$rep" "$work/ours.json" "$work/ours.time" "$work/fio.json" "$work/fio.time" >>"$raw" <<'EOF'
import json, sys
name, rep, ours_json, ours_time, fio_json, fio_time = sys.argv[1:]
def side(json_path, time_path):
    job = json.load(open(json_path))["jobs"][0]
    ios = job["read"]["total_ios"]
    runtime_s = job["read"]["runtime"] / 1000.0
    _, user, sys_ = (float(x) for x in open(time_path).read().split()[-3:])
    time_ns = (user + sys_) * 1e9 / ios
    json_ns = (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * runtime_s * 1e9 / ios
    return (ios / runtime_s, time_ns, json_ns, user * 1e9 / ios)
print("\t".join(str(x) for x in (name, rep) + side(ours_json, ours_time) + side(fio_json, fio_time)))
EOF
		tail -n 1 "$raw" | awk -F'\t' '{printf "rep %s  %-15s ours %8.0f IOPS %6.0f ns/IO   fio %8.0f IOPS %6.0f ns/IO\n", $2, $1, $3, $4, $7, $8}' >&2
	done
done

python3 - "$raw" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    rows.setdefault(f[0], []).append([float(x) for x in f[2:]])
print()
print("| row | ours IOPS (median) | fio IOPS (median) | ours/fio IOPS | ours CPU ns/IO (time) | fio CPU ns/IO (time) | ours CPU ns/IO (JSON) | fio CPU ns/IO (JSON) | ours user ns/IO (time) | ours IOPS per rep | fio IOPS per rep |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name, runs in rows.items():
    med = [statistics.median(r[i] for r in runs) for i in range(8)]
    per = lambda i: ", ".join(f"{r[i]/1000:.0f}k" for r in runs)
    print(f"| {name} | {med[0]/1000:.0f}k | {med[4]/1000:.0f}k | {med[0]/med[4]:.2f} | {med[1]:.0f} | {med[5]:.0f} | {med[2]:.0f} | {med[6]:.0f} | {med[3]:.0f} | {per(0)} | {per(4)} |")
EOF
