#!/usr/bin/env bash
# raw-vs-fio.sh — the raw driver, through the whole block layer (front end →
# node → drivers/raw → ring), against fio's io_uring engine and qemu-img
# bench, side by side on one 1 GiB file on a disk filesystem.
#
# Rows: 4 KiB random read and random write at queue depth 32 and 1, 128 KiB
# sequential read and write at queue depth 32, each with O_DIRECT and
# buffered (page cache); plus 4 KiB random read at QD 32 with two jobs (two
# Contexts pinned one per core against fio --numjobs=2).
# Sides per row: ours; fio --ioengine=io_uring with the same options (fio's
# defaults otherwise); "fio-batch", fio tuned (batched submit/complete,
# fixed buffers, registered file) for reference; qemu-img bench -i io_uring
# and -i native where qemu-img bench can run the row (it has no random mode;
# native needs O_DIRECT; one job only).
# Every row runs every side once per repeat (ours, fio and fio-batch in an
# order that rotates with the repeat), repeats interleaved, medians
# reported; before each run, sync writes back what earlier rows dirtied. CPU per I/O is each process's user+sys (GNU time) divided by
# the I/Os it did (ours counts its 2000 warm-up requests too).
#
# usage: scripts/raw-vs-fio.sh [-d DIR] [-t SECONDS] [-r REPEATS] [-R ROWS]
#   -d DIR      where the data file lives (default /var/tmp; never tmpfs)
#   -t SECONDS  run time of each timed run (default 4)
#   -r REPEATS  interleaved repetitions (default 3)
#   -R ROWS     comma-separated row names to run (default: all)
#
# Needs go, fio, qemu-img, python3 and GNU time. The data file
# (DIR/rawbench-1g.dat, random data) is kept for the next run.
set -euo pipefail

dir=/var/tmp
secs=4
reps=3
only=
while getopts "d:t:r:R:h" opt; do
	case $opt in
	d) dir=$OPTARG ;;
	t) secs=$OPTARG ;;
	r) reps=$OPTARG ;;
	R) only=$OPTARG ;;
	h) sed -n '2,27p' "$0"; exit 0 ;;
	*) sed -n '20,24p' "$0" >&2; exit 2 ;;
	esac
done

prog=raw-vs-fio
. "$(dirname "$0")/benchlib.sh"
check_runs "$secs" "$reps"
check_disk_dir "$dir"
need go fio python3 gnu-time
have_qemu=1
command -v qemu-img >/dev/null || { have_qemu=0; echo "raw-vs-fio: qemu-img missing: its columns stay empty" >&2; }

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && go test -c -o "$work/raw.test" ./drivers/raw) || die "building the drivers/raw test binary failed"

file=$dir/rawbench-1g.dat
size=$((1 << 30))
if [ ! -f "$file" ] || [ "$(stat -c %s "$file")" -ne "$size" ]; then
	echo "creating $file (1 GiB of random data)" >&2
	head -c "$size" /dev/urandom >"$file.tmp" && mv "$file.tmp" "$file"
fi

# name | rw | bs | qd | direct | jobs
rows=(
	"randread-4k-qd32-direct|randread|4096|32|1|1"
	"randread-4k-qd32-buffered|randread|4096|32|0|1"
	"randwrite-4k-qd32-direct|randwrite|4096|32|1|1"
	"randwrite-4k-qd32-buffered|randwrite|4096|32|0|1"
	"randread-4k-qd1-direct|randread|4096|1|1|1"
	"randread-4k-qd1-buffered|randread|4096|1|0|1"
	"randwrite-4k-qd1-direct|randwrite|4096|1|1|1"
	"randwrite-4k-qd1-buffered|randwrite|4096|1|0|1"
	"read-128k-qd32-direct|read|131072|32|1|1"
	"read-128k-qd32-buffered|read|131072|32|0|1"
	"write-128k-qd32-direct|write|131072|32|1|1"
	"write-128k-qd32-buffered|write|131072|32|0|1"
	"randread-4k-qd32-direct-2jobs|randread|4096|32|1|2"
	"randread-4k-qd32-buffered-2jobs|randread|4096|32|0|2"
)

echo "# $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -r), $(nproc) CPUs, $(fio --version), $(qemu-img --version | head -n 1), $(go version | cut -d' ' -f3)"
echo "# file $file ($fstype), ${secs}s per timed run, $reps interleaved repeats, load before: $(cut -d' ' -f1-3 /proc/loadavg)"

raw=$work/raw.tsv
: >"$raw"
timed() { # timed OUT TIMEFILE cmd...: run cmd with GNU time
	local out=$1 tf=$2
	shift 2
	/usr/bin/time -f '%e %U %S' -o "$tf" "$@" >"$out" 2>&1
}
record() { # record ROW REP SIDE IOPS CPU_NS
	printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$raw"
	printf 'rep %s %-32s %-12s %10.0f IOPS %8.0f ns/IO\n' "$2" "$1" "$3" "$4" "$5" >&2
}

for rep in $(seq 1 "$reps"); do
	for row in "${rows[@]}"; do
		IFS='|' read -r name rw bs qd direct jobs <<<"$row"
		if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
		# Before every run: write back what earlier write rows left dirty
		# (or its writeback would compete with whoever runs next), and for
		# buffered rows make sure the whole file is in the page cache.
		warm() {
			sync
			[ "$direct" = 1 ] || cat "$file" >/dev/null
		}
		run_ours() {
			warm
			local d=false
			[ "$direct" = 1 ] && d=true
			timed "$work/ours.out" "$work/ours.time" "$work/raw.test" -test.run '^TestRawBench$' \
				-rawbench.file="$file" -rawbench.rw="$rw" -rawbench.bs="$bs" -rawbench.qd="$qd" \
				-rawbench.runtime="${secs}s" -rawbench.direct="$d" -rawbench.jobs="$jobs" ||
				{ cat "$work/ours.out" >&2; die "ringblk run failed ($name)"; }
			read -r ours_iops ours_cpu < <(python3 - "$work/ours.out" "$work/ours.time" <<'EOF'
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("RAWBENCH ")][0]
r = json.loads(line.split(" ", 1)[1])
_, u, s = (float(x) for x in open(sys.argv[2]).read().split()[-3:])
print(r["iops"], (u + s) * 1e9 / (r["ios"] + r["warm_ios"]))
EOF
)
			record "$name" "$rep" ours "$ours_iops" "$ours_cpu"
		}

		# The order of ours, fio and fio-batch rotates with the repeat, so
		# no side always runs first (right after another row's writes).
		sides=(ours fio fio-batch)
		k=$(((rep - 1) % 3))
		sides=("${sides[@]:k}" "${sides[@]:0:k}")
		for side in "${sides[@]}"; do
			if [ "$side" = ours ]; then
				run_ours
				continue
			fi
			warm
			args=(fio --name="$name" --filename="$file" --ioengine=io_uring --rw="$rw" --bs="$bs"
				--iodepth="$qd" --direct="$direct" --runtime="$secs" --time_based --norandommap
				--randrepeat=0 --invalidate=0 --output-format=json --output="$work/fio.json")
			[ "$jobs" -gt 1 ] && args+=(--numjobs="$jobs" --group_reporting)
			[ "$side" = fio-batch ] && args+=(--iodepth_batch_submit="$qd" --iodepth_batch_complete_min=1
				--iodepth_batch_complete_max="$qd" --fixedbufs --registerfiles)
			timed "$work/fio.out" "$work/fio.time" "${args[@]}" || { cat "$work/fio.out" >&2; die "fio failed ($name)"; }
			read -r fio_iops fio_cpu < <(python3 - "$work/fio.json" "$work/fio.time" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
iops = j["read"]["iops"] + j["write"]["iops"]
_, u, s = (float(x) for x in open(sys.argv[2]).read().split()[-3:])
print(iops, (u + s) * 1e9 / ios)
EOF
)
			record "$name" "$rep" "$side" "$fio_iops" "$fio_cpu"
		done

		# qemu-img bench: one job; native needs O_DIRECT. It has no random
		# mode: on the random rows it strides by a prime number of blocks
		# (-S bs*4099, wrapping at the end of the file), which touches the
		# file as evenly as a random pattern; the table marks those rows.
		# The request count is ours' IOPS times the run time, so it runs
		# about as long.
		if [ "$have_qemu" = 1 ] && [ "$jobs" = 1 ]; then
			count=$(python3 -c "print(max(2000, int($ours_iops * $secs)))")
			cache=writeback
			[ "$direct" = 1 ] && cache=none
			for aio in io_uring native; do
				[ "$aio" = native ] && [ "$direct" = 0 ] && continue
				warm
				qargs=(qemu-img bench -f raw -t "$cache" -i "$aio" -c "$count" -d "$qd" -s "$bs")
				[[ $rw == *write ]] && qargs+=(-w --pattern=90) # non-zero data, like ours and fio's
				[[ $rw == rand* ]] && qargs+=(-S "$((bs * 4099))")
				timed "$work/qemu.out" "$work/qemu.time" "${qargs[@]}" "$file" ||
					{ cat "$work/qemu.out" >&2; die "qemu-img bench failed ($name, $aio)"; }
				read -r q_iops q_cpu < <(python3 - "$work/qemu.out" "$work/qemu.time" "$count" <<'EOF'
import re, sys
m = re.search(r"Run completed in ([0-9.]+) seconds", open(sys.argv[1]).read())
count = int(sys.argv[3])
_, u, s = (float(x) for x in open(sys.argv[2]).read().split()[-3:])
print(count / float(m.group(1)), (u + s) * 1e9 / count)
EOF
)
				record "$name" "$rep" "qemu-$aio" "$q_iops" "$q_cpu"
			done
		fi
	done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$raw" <<'EOF'
import statistics, sys
runs = {}
order = []
for line in open(sys.argv[1]):
    row, rep, side, iops, cpu = line.rstrip("\n").split("\t")
    if row not in runs:
        order.append(row)
    runs.setdefault(row, {}).setdefault(side, []).append((float(iops), float(cpu)))
def med(row, side, i):
    v = runs[row].get(side)
    return statistics.median(x[i] for x in v) if v else None
def k(x):
    return "–" if x is None else f"{x/1000:.1f}k" if x < 100000 else f"{x/1000:.0f}k"
def ns(x):
    return "–" if x is None else f"{x:.0f}"
def ratio(a, b):
    return "–" if a is None or b is None else f"{a/b:.2f}"
print()
print("| row | ours IOPS | fio IOPS | ours/fio | fio-batch IOPS | ours/fio-batch | best qemu IOPS | ours/qemu | ours CPU ns/IO | fio CPU ns/IO | fio-batch CPU ns/IO | qemu CPU ns/IO | ours IOPS per rep |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for row in order:
    o, f, fb = med(row, "ours", 0), med(row, "fio", 0), med(row, "fio-batch", 0)
    q = None; qside = None
    for s in ("qemu-io_uring", "qemu-native"):
        v = med(row, s, 0)
        if v is not None and (q is None or v > q):
            q, qside = v, s
    qlabel = "–" if q is None else f"{k(q)} ({qside[5:]}{', strided' if row.startswith('rand') else ''})"
    per = ", ".join(k(x[0]) for x in runs[row]["ours"])
    print(f"| {row} | {k(o)} | {k(f)} | {ratio(o, f)} | {k(fb)} | {ratio(o, fb)} | {qlabel} | {ratio(o, q)} | "
          f"{ns(med(row, 'ours', 1))} | {ns(med(row, 'fio', 1))} | {ns(med(row, 'fio-batch', 1))} | "
          f"{ns(med(row, qside, 1)) if qside else '–'} | {per} |")
EOF
