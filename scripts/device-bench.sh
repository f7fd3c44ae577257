#!/usr/bin/env bash
# device-bench.sh — O_DIRECT 4 KiB random I/O on fast block devices that live
# in RAM (issue 20): a zram device and a loop device with direct I/O over a
# tmpfs file. Both are created here and torn down on exit (also on error or
# Ctrl-C); a device this script did not create is never touched.
#
# Per device, pattern (randread, randwrite) and queue depth, each repeat runs
# these sides back to back (the order rotates with the repeat):
#   fio       fio --ioengine=io_uring with its defaults
#   fio-best  fio with --fixedbufs --registerfiles --iodepth_batch_submit=QD
#             --iodepth_batch_complete_min=1 --iodepth_batch_complete_max=QD
#             (and --hipri when the device polls: queue/io_poll = 1)
#   ringblk   ringblk bench --ioengine=ringblk (front end → raw node → aio)
#   ring      ringblk bench --ioengine=io_uring (the bare ring), defaults
#   ring-best the bare ring with fio-best's options
# and prints per row the median IOPS, CPU per I/O (user+sys of the process
# and its threads, io-wq workers included: GNU time, i.e. getrusage),
# I/Os per io_uring_enter (perf's syscall tracepoint, when perf can count
# it) and the IO-depths histogram of the median run, with the same-repeat
# ratios ringblk/fio and ring-best/fio-best (medians of per-repeat ratios).
#
# qcow2 rows (-Q): an ext4 file system on a second zram device holds a raw
# file and a fully allocated qcow2 copy of it. O_DIRECT randread: ringblk on
# the qcow2 image vs ringblk on the raw file; a strided read (qemu-img bench
# has no random mode: a step of 40503 blocks) of ringblk vs qemu-img bench
# -f qcow2 -t none -i io_uring; allocating writes (a 64 KiB step into a
# fresh image: one cluster allocation per 4 KiB write on both sides),
# ringblk vs qemu-img bench -w. (qemu-img bench reads into and writes from
# its first buffer for every request, a cache-hot 4 KiB; ringblk gives each
# request its own, as fio does.)
#
# usage: scripts/device-bench.sh [-t SECS] [-r REPEATS] [-q "1 8 32 128"]
#          [-D "zram loop"] [-w "randread randwrite"] [-s SIZE_MB] [-m TMPFS_DIR]
#          [-b RINGBLK_BIN] [-Q] [-O] [-k QCOW2_DEPTHS] [-R QCOW2_ROWS] [-S SIDES] [-T TSV]
#   -t SECS     run time of each measurement (default 3)
#   -r REPEATS  interleaved repeats (default 3)
#   -q DEPTHS   queue depths (default "1 8 32 128")
#   -D DEVICES  zram and/or loop (default both)
#   -w PATTERNS randread and/or randwrite (default both)
#   -s SIZE_MB  region every run covers, and the loop file's size (default 256)
#   -m DIR      tmpfs directory for the loop device's backing file (/dev/shm)
#   -b BIN      a built ringblk binary (default: go build ./cmd/ringblk)
#   -S SIDES    the device sides to run (default "fio fio-best ringblk ring ring-best")
#   -Q          also run the qcow2 rows; -O runs only them
#   -k DEPTHS   queue depths of the qcow2 rows (default "1 32")
#   -R ROWS     which qcow2 rows: randread, strided, alloc (default all three)
#   -T FILE     also write every run as a TSV line to FILE
# Run it as root (zram, losetup, mkfs), under the benchmark lock on a shared
# machine: flock /work/wt/bench.lock scripts/device-bench.sh
set -euo pipefail

secs=3
reps=3
depths="1 8 32 128"
devices="zram loop"
patterns="randread randwrite"
size_mb=256
tmpfs=/dev/shm
bin=${RINGBLK_BIN:-}
qcow=0
only_qcow=0
qdepths="1 32"
qrows="randread strided alloc"
sides="fio fio-best ringblk ring ring-best"
tsv_out=
while getopts "t:r:q:D:w:s:m:b:QOk:R:S:T:h" opt; do
	case $opt in
	t) secs=$OPTARG ;;
	r) reps=$OPTARG ;;
	q) depths=$OPTARG ;;
	D) devices=$OPTARG ;;
	w) patterns=$OPTARG ;;
	s) size_mb=$OPTARG ;;
	m) tmpfs=$OPTARG ;;
	b) bin=$OPTARG ;;
	Q) qcow=1 ;;
	O) qcow=1 only_qcow=1 ;;
	k) qdepths=$OPTARG ;;
	R) qrows=$OPTARG ;;
	S) sides=$OPTARG ;;
	T) tsv_out=$OPTARG ;;
	h) sed -n '2,47p' "$0"; exit 0 ;;
	*) sed -n '30,47p' "$0" >&2; exit 2 ;;
	esac
done

die() { echo "device-bench: $*" >&2; exit 1; }

[[ $secs =~ ^[0-9]+$ && $secs -gt 0 ]] || die "-t wants whole seconds, got '$secs'"
[[ $reps =~ ^[0-9]+$ && $reps -gt 0 ]] || die "-r wants a positive count, got '$reps'"
[[ $size_mb =~ ^[0-9]+$ && $size_mb -ge 16 && $size_mb -le 1024 ]] || die "-s wants 16..1024 (MiB), got '$size_mb'"
for r in $qrows; do
	case $r in randread | strided | alloc) ;; *) die "-R: unknown qcow2 row '$r' (randread, strided, alloc)" ;; esac
done
[ "$(id -u)" -eq 0 ] || die "run as root: zram and loop devices are set up here"
for tool in fio python3 losetup; do
	command -v "$tool" >/dev/null || die "$tool is required"
done
[ -x /usr/bin/time ] || die "GNU time (/usr/bin/time) is required to measure CPU"
if [ "$qcow" = 1 ]; then
	for tool in qemu-img mkfs.ext4; do
		command -v "$tool" >/dev/null || die "$tool is required for the qcow2 rows (-Q)"
	done
fi

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /var/tmp/device-bench.XXXXXX)

# Teardown state: only what this run created.
zram_ids=()
loopdev=
loopfile=
mnt=
cleanup() {
	set +e
	if [ -n "$mnt" ]; then
		umount "$mnt" 2>/dev/null
		rmdir "$mnt" 2>/dev/null
	fi
	if [ -n "$loopdev" ]; then
		losetup -d "$loopdev"
	fi
	[ -n "$loopfile" ] && rm -f "$loopfile"
	for id in "${zram_ids[@]}"; do
		echo 1 >"/sys/block/zram$id/reset" 2>/dev/null
		echo "$id" >/sys/class/zram-control/hot_remove 2>/dev/null ||
			echo "device-bench: could not remove zram$id (still open?)" >&2
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# new_zram BYTES: a fresh zram device of that size; prints its id.
new_zram() {
	if [ ! -e /sys/class/zram-control/hot_add ]; then
		modprobe zram num_devices=0 2>/dev/null || modprobe zram || die "cannot load the zram module"
		[ -e /sys/class/zram-control/hot_add ] || die "zram has no hot_add (kernel too old?)"
	fi
	local id
	id=$(cat /sys/class/zram-control/hot_add) || die "zram hot_add failed"
	zram_ids+=("$id")
	echo "$1" >"/sys/block/zram$id/disksize" || die "zram$id: cannot set disksize"
	new_zram_id=$id
}

if [ -z "$bin" ]; then
	(cd "$root" && go build -o "$work/ringblk" ./cmd/ringblk) || die "go build ./cmd/ringblk failed"
	bin=$work/ringblk
fi
[ -x "$bin" ] || die "no executable ringblk at $bin"

perf_ok=0
if command -v perf >/dev/null && perf stat -x, -e syscalls:sys_enter_io_uring_enter -o /dev/null true 2>/dev/null; then
	perf_ok=1
fi

size=$((size_mb << 20))
declare -A devpath
if [ "$only_qcow" = 0 ]; then
	for d in $devices; do
		case $d in
		zram)
			new_zram $((1 << 30))
			devpath[zram]=/dev/zram$new_zram_id
			;;
		loop)
			fst=$(df --output=fstype "$tmpfs" | tail -n 1)
			[ "$fst" = tmpfs ] || die "$tmpfs is $fst, not tmpfs (-m)"
			loopfile=$(mktemp "$tmpfs/device-bench.XXXXXX")
			truncate -s "$size" "$loopfile"
			loopdev=$(losetup --direct-io=on --find --show "$loopfile") || die "losetup failed"
			[ "$(cat "/sys/block/$(basename "$loopdev")/loop/dio")" = 1 ] ||
				echo "device-bench: $loopdev: direct I/O to the backing file is off (kernel refused it)" >&2
			devpath[loop]=$loopdev
			;;
		*) die "unknown device '$d' (zram, loop)" ;;
		esac
		# Real data in the region, so reads copy stored pages (zram keeps
		# incompressible pages as they are) rather than zero fills.
		dd if=/dev/urandom of="${devpath[$d]}" bs=1M count="$size_mb" oflag=direct status=none ||
			die "filling ${devpath[$d]} failed"
	done
fi

raw=$work/runs.tsv
: >"$raw"

# measure ROW SIDE REP IOCOUNT cmd...: runs cmd (which writes fio JSON to
# $work/out.json, or for qemu-img its text to $work/out.txt) under GNU time
# and, when available, perf counting io_uring_enter; appends a TSV line.
# IOCOUNT is the I/O count for qemu-img (its output has no JSON), else -.
measure() {
	local row=$1 side=$2 rep=$3 count=$4
	shift 4
	local pre=()
	[ "$perf_ok" = 1 ] && pre=(perf stat -x, -o "$work/perf.out" -e syscalls:sys_enter_io_uring_enter --)
	rm -f "$work/out.json" "$work/out.txt" "$work/perf.out"
	if ! "${pre[@]}" /usr/bin/time -f '%e %U %S' -o "$work/time.out" "$@" >"$work/out.txt" 2>"$work/err.txt"; then
		cat "$work/err.txt" >&2
		die "$side failed on $row: $*"
	fi
	python3 - "$row" "$side" "$rep" "$count" "$work" >>"$raw" <<'EOF'
import json, os, re, sys
row, side, rep, count, work = sys.argv[1:]
_, user, sys_ = (float(x) for x in open(os.path.join(work, "time.out")).read().split()[-3:])
enters = "-"
pp = os.path.join(work, "perf.out")
if os.path.exists(pp):
    for line in open(pp):
        f = line.strip().split(",")
        if len(f) > 2 and "io_uring_enter" in f[2] and f[0].replace(".", "").isdigit():
            enters = float(f[0])
depth = "-"
if count == "-":
    job = json.load(open(os.path.join(work, "out.json")))["jobs"][0]
    ios = sum(job[d]["total_ios"] for d in ("read", "write"))
    iops = sum(job[d]["iops"] for d in ("read", "write"))
    lv = job.get("iodepth_level", {})
    depth = " ".join(f"{k}={v:.0f}" for k, v in lv.items() if v >= 0.5) or "-"
else:
    ios = int(count)
    m = re.search(r"Run completed in ([0-9.]+) seconds", open(os.path.join(work, "out.txt")).read())
    iops = ios / max(float(m.group(1)), 1e-3)
cpu = (user + sys_) * 1e9 / max(ios, 1)
per_enter = "-" if enters == "-" or enters == 0 else f"{ios / enters:.2f}"
print("\t".join(str(x) for x in (row, side, rep, f"{iops:.0f}", f"{cpu:.0f}", per_enter, depth)))
EOF
	tail -n 1 "$raw" | awk -F'\t' '{printf "rep %s %-28s %-10s %9.0f IOPS %6.0f ns/IO  %s IOs/enter  depths %s\n", $3, $1, $2, $4, $5, $6, $7}' >&2
}

echo "# device-bench $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -r), $(nproc) CPUs, $(fio --version), $(go version 2>/dev/null | cut -d' ' -f3)"
echo "# ${secs}s per run, $reps interleaved repeats, region ${size_mb} MiB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$only_qcow" = 0 ]; then
	for rep in $(seq 1 "$reps"); do
		for d in $devices; do
			dev=${devpath[$d]}
			hipri=
			[ "$(cat "/sys/block/$(basename "$dev")/queue/io_poll" 2>/dev/null || echo 0)" = 1 ] && hipri=--hipri
			for rw in $patterns; do
				for qd in $depths; do
					row="$d $rw qd$qd"
					job=(--name=dev --filename="$dev" --rw="$rw" --bs=4k --iodepth="$qd" --direct=1
						--size="${size_mb}m" --runtime="$secs" --time_based --norandommap --randrepeat=0
						--output-format=json --output="$work/out.json")
					best=(--fixedbufs --registerfiles --iodepth_batch_submit="$qd"
						--iodepth_batch_complete_min=1 --iodepth_batch_complete_max="$qd" $hipri)
					read -r -a order <<<"$sides"
					k=$(((rep - 1) % ${#order[@]}))
					order=("${order[@]:k}" "${order[@]:0:k}")
					for side in "${order[@]}"; do
						case $side in
						fio) measure "$row" "$side" "$rep" - fio "${job[@]}" --ioengine=io_uring ;;
						fio-best) measure "$row" "$side" "$rep" - fio "${job[@]}" --ioengine=io_uring "${best[@]}" ;;
						ringblk) measure "$row" "$side" "$rep" - "$bin" bench "${job[@]}" --ioengine=ringblk ;;
						ring) measure "$row" "$side" "$rep" - "$bin" bench "${job[@]}" --ioengine=io_uring ;;
						ring-best) measure "$row" "$side" "$rep" - "$bin" bench "${job[@]}" --ioengine=io_uring "${best[@]}" ;;
						*) die "unknown side '$side'" ;;
						esac
					done
				done
			done
		done
	done
fi

if [ "$qcow" = 1 ]; then
	# 3 GiB: the data file, its qcow2 copy and one allocating image (QEMU
	# zero-fills each new cluster with fallocate, which takes space but no
	# zram memory).
	new_zram $((3 << 30))
	fsdev=/dev/zram$new_zram_id
	mkfs.ext4 -q -F "$fsdev" || die "mkfs.ext4 $fsdev failed"
	mnt=$(mktemp -d /var/tmp/device-bench-mnt.XXXXXX)
	mount "$fsdev" "$mnt" || die "mount $fsdev failed"
	rawf=$mnt/data.raw
	img=$mnt/data.qcow2
	fresh=$mnt/fresh.qcow2
	dd if=/dev/urandom of="$rawf" bs=1M count="$size_mb" status=none
	qemu-img convert -f raw -O qcow2 "$rawf" "$img" || die "qemu-img convert failed"
	sync
	stride=40503 # qemu-img bench's step for the strided rows, in blocks (odd: visits every block)
	nalloc=10000 # allocating writes per run (64 KiB apart: 640 MiB of clusters, 40 MiB of data)
	for rep in $(seq 1 "$reps"); do
		for qd in $qdepths; do
			common=(--bs=4k --iodepth="$qd" --direct=1 --norandommap --randrepeat=0
				--output-format=json --output="$work/out.json" --ioengine=ringblk)
			row="qcow2 randread qd$qd"
			if ((rep % 2)); then order=(qcow2 raw); else order=(raw qcow2); fi
			[[ " $qrows " == *" randread "* ]] || order=()
			for side in "${order[@]}"; do
				f=$img fmt=qcow2
				[ "$side" = raw ] && f=$rawf fmt=raw
				measure "$row" "ringblk-$side" "$rep" - "$bin" bench --name=q --filename="$f" --format="$fmt" \
					--rw=randread --size="${size_mb}m" --runtime="$secs" --time_based "${common[@]}"
			done
			row="qcow2 strided read qd$qd"
			if [[ " $qrows " == *" strided "* ]]; then
				# ringblk: read:N skips N bytes after every block, so the step is
				# stride blocks, wrapping at the end like qemu-img bench's modulo.
				measure "$row" ringblk-qcow2 "$rep" - "$bin" bench --name=q --filename="$img" --format=qcow2 \
					--rw=read:$(((stride - 1) * 4096)) --size="${size_mb}m" --runtime="$secs" --time_based "${common[@]}"
				count=$(python3 -c "import json; j=json.load(open('$work/out.json'))['jobs'][0]; print(max(5000, int(j['read']['iops']*$secs)))")
				measure "$row" qemu-img "$rep" "$count" qemu-img bench -f qcow2 -t none -i io_uring -d "$qd" \
					-s 4096 -S $((stride * 4096)) -c "$count" "$img"
			fi
			row="qcow2 alloc write qd$qd"
			sides_alloc=(ringblk qemu-img)
			[[ " $qrows " == *" alloc "* ]] || sides_alloc=()
			for side in "${sides_alloc[@]}"; do
				rm -f "$fresh"
				qemu-img create -q -f qcow2 "$fresh" $((nalloc * 65536))
				if [ "$side" = ringblk ]; then
					measure "$row" ringblk-qcow2 "$rep" - "$bin" bench --name=q --filename="$fresh" --format=qcow2 \
						--rw=write:61440 --size=$((nalloc * 65536)) "${common[@]}"
					qemu-img check -q "$fresh" || die "qemu-img check failed after ringblk's allocating writes"
				else
					measure "$row" qemu-img "$rep" "$nalloc" qemu-img bench -w -f qcow2 -t none -i io_uring -d "$qd" \
						-s 4096 -S 65536 -c "$nalloc" "$fresh"
				fi
			done
			rm -f "$fresh"
		done
	done
fi

[ -n "$tsv_out" ] && cp "$raw" "$tsv_out"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$raw" <<'EOF'
import statistics, sys
from collections import OrderedDict
runs = OrderedDict()
for line in open(sys.argv[1]):
    row, side, rep, iops, cpu, pe, depth = line.rstrip("\n").split("\t")
    runs.setdefault(row, OrderedDict()).setdefault(side, {})[int(rep)] = (float(iops), float(cpu), pe, depth)
def med(xs):
    return statistics.median(xs) if xs else float("nan")
def ratio(r, a, b, i):
    # median over repeats of the same-repeat ratio a/b
    sa, sb = r.get(a, {}), r.get(b, {})
    xs = [sa[k][i] / sb[k][i] for k in sa if k in sb and sb[k][i] > 0]
    return med(xs) if xs else None
pairs = [("ringblk", "fio"), ("ring-best", "fio-best"), ("ring", "fio"),
         ("ringblk-qcow2", "ringblk-raw"), ("ringblk-qcow2", "qemu-img")]
print()
print("| row | side | IOPS (median) | CPU ns/IO | IOs/enter | IO depths (median run, %) |")
print("|---|---|---|---|---|---|")
for row, sides in runs.items():
    for side, reps in sides.items():
        vals = sorted(reps.values(), key=lambda v: v[0])
        mid = vals[len(vals) // 2]
        pes = [float(v[2]) for v in vals if v[2] != "-"]
        pe = f"{med(pes):.2f}" if pes else "-"
        print(f"| {row} | {side} | {med([v[0] for v in vals]) / 1000:.0f}k | {med([v[1] for v in vals]):.0f} | {pe} | {mid[3]} |")
print()
print("| row | pair | IOPS ratio | CPU/IO ratio | target | met |")
print("|---|---|---|---|---|---|")
for row, sides in runs.items():
    for a, b in pairs:
        if a not in sides or b not in sides:
            continue
        ri, rc = ratio(sides, a, b, 0), ratio(sides, a, b, 1)
        if ri is None:
            continue
        if (a, b) == ("ringblk", "fio"):
            target, met = ">=1.0x IOPS at <=1.0x CPU", ri >= 1.0 and rc <= 1.0
        elif (a, b) == ("ring-best", "fio-best"):
            target, met = ">=1.0x IOPS", ri >= 1.0
        elif (a, b) == ("ringblk-qcow2", "ringblk-raw"):
            target, met = ">=0.95x IOPS", ri >= 0.95
        elif (a, b) == ("ringblk-qcow2", "qemu-img"):
            want = 1.5 if "alloc" in row else 1.0
            target, met = f">={want}x IOPS", ri >= want
        else:
            target, met = "-", None
        print(f"| {row} | {a}/{b} | {ri:.2f} | {rc:.2f} | {target} | {'-' if met is None else ('yes' if met else 'NO')} |")
EOF
