#!/usr/bin/env bash
# qcow2-vs-qemu.sh — the qcow2 driver, through the whole block layer
# (ringblk bench --ioengine=ringblk: front end → qcow2 node → raw file node
# → ring), against the raw driver on the same data and against qemu-img
# bench on the same image, side by side, for the qcow2 performance rows.
#
# Rows (4 KiB, queue depth 32, one job), each buffered and O_DIRECT:
#   randread     a fully allocated 1 GiB qcow2 image (qemu-img convert of
#                1 GiB of random data, 64 KiB clusters). Sides: ringblk on
#                the qcow2; ringblk on the raw file it was converted from
#                (target qcow2/raw >= 0.9); qemu-img bench -f qcow2 -i
#                io_uring (target qcow2/qemu >= 2 on the buffered row).
#   read         (buffered only) the same image read sequentially by every
#                side: qemu-img bench's own pattern, for a like-for-like
#                qcow2/qemu ratio.
#   randwrite    allocating writes to a fresh 64 GiB qcow2 image (qemu-img
#                create, recreated before every run; so large that nearly
#                every write of a few-second run allocates). Sides: ringblk;
#                qemu-img bench -w -f qcow2 -i io_uring (target >= 1.5).
# qemu-img bench has no random mode: its rows are sequential (4 KiB step;
# on a fresh image that allocates a cluster every 16 writes), plus, for
# reads, a prime stride (4099 blocks, "qemu-strided"). The write rows add "qemu-alloc",
# qemu-img bench with a 64 KiB step (-S, the cluster size): every write
# allocates a cluster, as most early random writes to a fresh image do.
# -t writeback on buffered rows, -t none on O_DIRECT rows.
# Every row runs every side once per repeat (ringblk sides in an order
# that rotates with the repeat), repeats interleaved, medians reported;
# before each run, sync writes back what earlier runs dirtied. CPU per I/O
# is each process's user+sys (GNU time) divided by the I/Os it did. After
# each ringblk write run the image must pass qemu-img check. "qcow2/raw
# paired" is the median over repeats of the ratio within one repeat (runs
# adjacent in time), which the machine's drift moves less.
#
# usage: scripts/qcow2-vs-qemu.sh [-d DIR] [-t SECONDS] [-r REPEATS] [-R ROWS]
#   -d DIR      where the images live (default /var/tmp; never tmpfs)
#   -t SECONDS  run time of each timed ringblk run (default 4)
#   -r REPEATS  interleaved repetitions (default 3)
#   -R ROWS     comma-separated row names to run (default: all)
#
# Needs go, qemu-img, python3 and GNU time. The data files
# (DIR/qcow2bench-1g.raw and DIR/qcow2bench-1g.qcow2) are kept for the
# next run.
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
	h) sed -n '2,41p' "$0"; exit 0 ;;
	*) sed -n '34,39p' "$0" >&2; exit 2 ;;
	esac
done

prog=qcow2-vs-qemu
. "$(dirname "$0")/benchlib.sh"
check_runs "$secs" "$reps"
check_disk_dir "$dir"
need go qemu-img python3 gnu-time

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
fresh=$dir/qcow2bench-fresh.$$.qcow2
trap 'rm -rf "$work" "$fresh"' EXIT
(cd "$root" && go build -o "$work/ringblk" ./cmd/ringblk) || die "building ringblk failed"

size=$((1 << 30))
# The write rows use a fresh 64 GiB (virtual) image: in a few seconds both
# sides write a few tens of thousands of 4 KiB blocks into about a million
# clusters, so (nearly) every write allocates, on both sides, for the
# whole run. The file only holds what was written.
wsize=$((64 << 30))
rawf=$dir/qcow2bench-1g.raw
qcow=$dir/qcow2bench-1g.qcow2
if [ ! -f "$rawf" ] || [ "$(stat -c %s "$rawf")" -ne "$size" ]; then
	echo "creating $rawf (1 GiB of random data)" >&2
	head -c "$size" /dev/urandom >"$rawf.tmp" && mv "$rawf.tmp" "$rawf"
	rm -f "$qcow"
fi
if [ ! -f "$qcow" ] || [ "$qcow" -ot "$rawf" ]; then
	echo "creating $qcow (qemu-img convert of $rawf: every cluster allocated)" >&2
	qemu-img convert -f raw -O qcow2 "$rawf" "$qcow.tmp" && mv "$qcow.tmp" "$qcow"
fi

# name | rw | direct
rows=(
	"randread-4k-qd32-buffered|randread|0"
	"randread-4k-qd32-direct|randread|1"
	"read-4k-qd32-buffered|read|0"
	"randwrite-alloc-4k-qd32-buffered|randwrite|0"
	"randwrite-alloc-4k-qd32-direct|randwrite|1"
)

echo "# $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -r), $(nproc) CPUs, $(qemu-img --version | head -n 1), $(go version | cut -d' ' -f3)"
echo "# images in $dir ($fstype), ${secs}s per ringblk run, $reps interleaved repeats, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# qemu-img bench has no random mode: 4 KiB-step columns are sequential reads / writes to a fresh image (a cluster allocated every 16 writes); the other column is a prime stride of 4099 blocks for reads (qemu-strided) and a 64 KiB step for writes (qemu-alloc, one allocation per write)"

raw=$work/runs.tsv
: >"$raw"
timed() { # timed OUT TIMEFILE cmd...: run cmd with GNU time
	local out=$1 tf=$2
	shift 2
	/usr/bin/time -f '%e %U %S' -o "$tf" "$@" >"$out" 2>&1
}
record() { # record ROW REP SIDE IOPS CPU_NS
	printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$raw"
	printf 'rep %s %-34s %-8s %10.0f IOPS %8.0f ns/IO\n' "$2" "$1" "$3" "$4" "$5" >&2
}

for rep in $(seq 1 "$reps"); do
	for row in "${rows[@]}"; do
		IFS='|' read -r name rw direct <<<"$row"
		if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then continue; fi
		# Before every run: write back what earlier runs left dirty, and
		# for buffered reads make sure the file is in the page cache.
		warm() { # warm FILE
			sync
			[ "$direct" = 1 ] || [ "$rw" = randwrite ] || {
				# Evict, then read the file once sequentially, so every side
				# finds it cached the same way (readahead's large folios):
				# the page cache a previous write or copy left behind costs
				# random 4 KiB reads up to 1.6x more kernel time.
				python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
				cat "$1" >/dev/null
			}
		}
		run_ours() { # run_ours SIDE FILE FORMAT
			local side=$1 file=$2 format=$3
			if [ "$rw" = randwrite ]; then
				rm -f "$fresh"
				qemu-img create -q -f qcow2 "$fresh" "$wsize"
				file=$fresh
			fi
			warm "$file"
			local args=("$work/ringblk" bench --name="$name" --filename="$file" --ioengine=ringblk
				--format="$format" --rw="$rw" --bs=4k --iodepth=32 --runtime="$secs" --time_based
				--norandommap --invalidate=0 --output-format=json --output="$work/ours.json")
			[ "$direct" = 1 ] && args+=(--direct=1)
			timed "$work/ours.out" "$work/ours.time" "${args[@]}" ||
				{ cat "$work/ours.out" >&2; die "ringblk run failed ($name, $side)"; }
			if [ "$rw" = randwrite ]; then
				qemu-img check -q "$fresh" >"$work/check.out" 2>&1 ||
					{ cat "$work/check.out" >&2; die "qemu-img check failed after ringblk's writes ($name)"; }
			fi
			read -r iops cpu < <(python3 - "$work/ours.json" "$work/ours.time" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
iops = j["read"]["iops"] + j["write"]["iops"]
_, u, s = (float(x) for x in open(sys.argv[2]).read().split()[-3:])
print(iops, (u + s) * 1e9 / max(ios, 1))
EOF
)
			record "$name" "$rep" "$side" "$iops" "$cpu"
			ours_iops=$iops
		}

		sides=(qcow2)
		[ "$rw" != randwrite ] && sides=(qcow2 raw)
		k=$(((rep - 1) % ${#sides[@]}))
		sides=("${sides[@]:k}" "${sides[@]:0:k}")
		qcow2_iops=
		for side in "${sides[@]}"; do
			if [ "$side" = qcow2 ]; then
				run_ours qcow2 "$qcow" qcow2
				qcow2_iops=$ours_iops
			else
				run_ours raw "$rawf" raw
			fi
		done

		# qemu-img bench: about as many requests as ringblk's qcow2 side did
		# in its run. Writes: the 4 KiB step (the issue's row) allocates a
		# cluster every 16 writes; the cluster-size step ("qemu-alloc")
		# allocates one per write, as most of ringblk's random writes to a
		# fresh image do. Either stops after one pass over the image.
		cache=writeback
		[ "$direct" = 1 ] && cache=none
		# Reads: also a prime stride of 4099 blocks ("qemu-strided"),
		# which wraps at the end of the image and touches it as evenly as
		# random reads do, without sequential reads' page-cache locality.
		steps=(4096 $((4096 * 4099)))
		[ "$rw" = randwrite ] && steps=(4096 65536)
		[ "$rw" = read ] && steps=(4096) # the same pattern as ringblk's
		for step in "${steps[@]}"; do
			count=$(python3 -c "print(max(2000, int($qcow2_iops * $secs)))")
			qargs=(qemu-img bench -f qcow2 -t "$cache" -i io_uring -d 32 -s 4096 -S "$step")
			file=$qcow
			side=qemu
			if [ "$rw" = randwrite ]; then
				count=$((count < wsize / step ? count : wsize / step))
				rm -f "$fresh"
				qemu-img create -q -f qcow2 "$fresh" "$wsize"
				file=$fresh
				qargs+=(-w --pattern=90) # non-zero data, like ringblk's
				[ "$step" = 4096 ] || side=qemu-alloc
			elif [ "$step" != 4096 ]; then
				side=qemu-strided
			fi
			warm "$file"
			timed "$work/qemu.out" "$work/qemu.time" "${qargs[@]}" -c "$count" "$file" ||
				{ cat "$work/qemu.out" >&2; die "qemu-img bench failed ($name, step $step)"; }
			read -r q_iops q_cpu < <(python3 - "$work/qemu.out" "$work/qemu.time" "$count" <<'EOF2'
import re, sys
m = re.search(r"Run completed in ([0-9.]+) seconds", open(sys.argv[1]).read())
count = int(sys.argv[3])
_, u, s = (float(x) for x in open(sys.argv[2]).read().split()[-3:])
print(count / float(m.group(1)), (u + s) * 1e9 / count)
EOF2
)
			record "$name" "$rep" "$side" "$q_iops" "$q_cpu"
		done
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
def paired(row):
    # qcow2/raw of the runs of one repeat (adjacent in time), median over
    # repeats: less exposed to the machine's drift than a ratio of medians.
    q, r = runs[row].get("qcow2"), runs[row].get("raw")
    if not q or not r:
        return None
    return statistics.median(a[0] / b[0] for a, b in zip(q, r))
def med(row, side, i):
    v = runs[row].get(side)
    return statistics.median(x[i] for x in v) if v else None
def k(x):
    return "–" if x is None else f"{x/1000:.1f}k" if x < 100000 else f"{x/1000:.0f}k"
def ns(x):
    return "–" if x is None else f"{x:.0f}"
def ratio(a, b):
    return "–" if a is None or b is None else f"{a/b:.2f}"
targets = {  # row: (qcow2/raw, qcow2/qemu), the qcow2 issue's targets
    "randread-4k-qd32-buffered": ("0.9", "2"),
    "randread-4k-qd32-direct": ("0.9", None),
    "randwrite-alloc-4k-qd32-buffered": (None, "1.5"),
    "randwrite-alloc-4k-qd32-direct": (None, "1.5"),
}
def tgt(x):
    return f" (≥{x})" if x else ""
print()
print("| row | qcow2 IOPS | raw IOPS | qcow2/raw (target) | qcow2/raw paired | qemu-img bench IOPS (4 KiB step) | qcow2/qemu (target) | qemu-img bench IOPS, other step (reads: strided; writes: 64 KiB) | qcow2/that | qcow2 CPU ns/IO | raw CPU ns/IO | qemu CPU ns/IO | qcow2 IOPS per rep |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for row in order:
    q2, r, qe = med(row, "qcow2", 0), med(row, "raw", 0), med(row, "qemu", 0)
    qa = med(row, "qemu-alloc", 0) if row.startswith("randwrite") else med(row, "qemu-strided", 0)
    tr, tq = targets.get(row, (None, None))
    per = ", ".join(k(x[0]) for x in runs[row]["qcow2"])
    pr = paired(row)
    print(f"| {row} | {k(q2)} | {k(r)} | {ratio(q2, r)}{tgt(tr)} | {'–' if pr is None else f'{pr:.2f}'} | {k(qe)} | {ratio(q2, qe)}{tgt(tq)} | {k(qa)} | {ratio(q2, qa)} | "
          f"{ns(med(row, 'qcow2', 1))} | {ns(med(row, 'raw', 1))} | {ns(med(row, 'qemu', 1))} | {per} |")
EOF
