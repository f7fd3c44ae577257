#!/usr/bin/env bash
# rbd-vs-fio.sh — the RBD driver through the whole block layer (ringblk
# bench, ioengine=ringblk, front end → node → drivers/rbd → librbd) against
# fio's rbd engine and qemu-img bench on an rbd: name, side by side on one
# RBD image of a one-node Ceph cluster (scripts/ceph-single.sh: monitor and
# one OSD on 127.0.0.1, so the cluster's own CPU is in every row). The OSD
# is bluestore on a tmpfs file (CEPH_OSD_STORE=memstore for the old one,
# which slows down as it is overwritten).
#
# Rows: 4 KiB random read and random write at queue depth 32, 1 MiB
# sequential read and write at queue depth 32, on a 256 MiB image filled
# with random data first. Every row runs every side once per repeat (the
# order rotates with the repeat), repeats interleaved, medians reported.
# CPU per I/O is the benchmark process's user+sys (GNU time; librbd's
# threads included, the cluster's daemons not) divided by its I/Os.
# qemu-img bench has no random mode: on the random rows it strides by a
# prime number of blocks (-S bs*4099), marked "stride" in the table. It
# also sends every request to or from its first buffer (its callback
# passes the first of its I/O vectors each time), which stays in the CPU
# cache: on the 1 MiB rows its CPU per I/O is not comparable with fio's
# or ringblk's, whose requests each have their own buffer
# (docs/performance.md, RBD driver, session 14).
#
# usage: scripts/rbd-vs-fio.sh [-t SECONDS] [-r REPEATS] [-R ROWS] [-n]
#   -t SECONDS  run time of each timed run (default 5)
#   -r REPEATS  interleaved repetitions (default 3)
#   -R ROWS     comma-separated row names to run (default: all)
#   -n          noise control: fio runs a second time in each repeat and
#               the table adds fio/fio, the ratio that the cluster's own
#               run-to-run spread gives two identical clients
#
# Runs under flock /work/wt/bench.lock when that file exists (one
# benchmark at a time on a shared machine). Needs go, fio (with the rbd
# engine), qemu-img with qemu-block-extra (else its column stays empty),
# python3, GNU time and the Ceph packages (scripts/deps.sh).
set -euo pipefail

secs=5
reps=3
only=
noise=0
while getopts "t:r:R:nh" opt; do
	case $opt in
	t) secs=$OPTARG ;;
	r) reps=$OPTARG ;;
	R) only=$OPTARG ;;
	n) noise=1 ;;
	h) sed -n '2,30p' "$0"; exit 0 ;;
	*) sed -n '19,25p' "$0" >&2; exit 2 ;;
	esac
done
prog=rbd-vs-fio
. "$(dirname "$0")/benchlib.sh"
check_runs "$secs" "$reps"

root=$(cd "$(dirname "$0")/.." && pwd)
lock=/work/wt/bench.lock
if [ -z "${RBD_VS_FIO_LOCKED:-}" ] && [ -e "$lock" ]; then
	# Build before waiting for the lock: the lock is for measuring.
	bin=$(mktemp -d /var/tmp/rbd-vs-fio-bin.XXXXXX)
	(cd "$root" && go build -tags rbd -o "$bin/ringblk" ./cmd/ringblk) || die "building ringblk with -tags rbd failed (librbd-dev installed?)"
	rc=0
	RBD_VS_FIO_LOCKED=1 RBD_VS_FIO_BIN=$bin/ringblk flock "$lock" "$0" "$@" || rc=$?
	rm -rf "$bin"
	exit $rc
fi

need go fio python3 rbd gnu-time
fio --enghelp=rbd >/dev/null 2>&1 || die "this fio has no rbd engine"
have_qemu=0
if command -v qemu-img >/dev/null && qemu-img --help | grep -q 'Supported formats:.* rbd' &&
	ls /usr/lib/*/qemu/block-rbd.so >/dev/null 2>&1; then
	have_qemu=1
else
	echo "rbd-vs-fio: qemu-img has no rbd driver (install qemu-block-extra): its column stays empty" >&2
fi

work=$(mktemp -d /var/tmp/rbd-vs-fio.XXXXXX)
cdir=$work/ceph
trap '"$root/scripts/ceph-single.sh" stop "$cdir" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
if [ -n "${RBD_VS_FIO_BIN:-}" ]; then
	cp "$RBD_VS_FIO_BIN" "$work/ringblk"
else
	(cd "$root" && go build -tags rbd -o "$work/ringblk" ./cmd/ringblk) || die "building ringblk with -tags rbd failed (librbd-dev installed?)"
fi
# bluestore on tmpfs unless told otherwise: a memstore OSD slows down as
# it is overwritten, so later sides would see a slower cluster.
conf=$(CEPH_OSD_STORE=${CEPH_OSD_STORE:-bluestore} "$root/scripts/ceph-single.sh" start "$cdir")
export CEPH_CONF=$conf # fio's rbd engine and the rbd tool read it
img=bench
name="rbd:rbd/$img:conf=$conf"
size=$((256 << 20))
head -c "$size" /dev/urandom | rbd import --no-progress - "rbd/$img" >/dev/null

# name | rw | bs | qd
rows=(
	"randread-4k-qd32|randread|4096|32"
	"randwrite-4k-qd32|randwrite|4096|32"
	"read-1m-qd32|read|1048576|32"
	"write-1m-qd32|write|1048576|32"
)

echo "# $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -r), $(nproc) CPUs, $(fio --version), $(qemu-img --version | head -n 1), ceph $(ceph --version | cut -d' ' -f3), $(go version | cut -d' ' -f3)"
echo "# one-node cluster (mon + ${CEPH_OSD_STORE:-bluestore} OSD on 127.0.0.1), image $size bytes of random data, ${secs}s per timed run, $reps interleaved repeats, load before: $(cut -d' ' -f1-3 /proc/loadavg)"

raw=$work/raw.tsv
: >"$raw"
timed() { # timed OUT TIMEFILE cmd...: run cmd with GNU time
	local out=$1 tf=$2
	shift 2
	/usr/bin/time -f '%e %U %S' -o "$tf" "$@" >"$out" 2>&1
}
record() { # record ROW REP SIDE IOPS CPU_NS
	printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$raw"
	printf 'rep %s %-20s %-8s %10.0f IOPS %8.0f ns/IO\n' "$2" "$1" "$3" "$4" "$5" >&2
}
fiojson() { # fiojson JSON TIMEFILE: IOPS and CPU ns per I/O of a fio-format result
	python3 - "$1" "$2" <<'EOF'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
iops = j["read"]["iops"] + j["write"]["iops"]
_, u, s = (float(x) for x in open(sys.argv[2]).read().split()[-3:])
print(iops, (u + s) * 1e9 / ios)
EOF
}

for rep in $(seq 1 "$reps"); do
	for row in "${rows[@]}"; do
		IFS='|' read -r rname rw bs qd <<<"$row"
		if [ -n "$only" ] && [[ ",$only," != *",$rname,"* ]]; then continue; fi
		common=(--name="$rname" --rw="$rw" --bs="$bs" --iodepth="$qd" --runtime="$secs" --time_based
			--norandommap --randrepeat=0 --size="$size" --output-format=json)
		sides=(ringblk fio)
		[ "$noise" = 1 ] && sides+=(fio-again)
		k=$(((rep - 1) % ${#sides[@]}))
		sides=("${sides[@]:k}" "${sides[@]:0:k}")
		for side in "${sides[@]}"; do
			if [ "$side" = ringblk ]; then
				timed "$work/o.json" "$work/o.time" "$work/ringblk" bench --ioengine=ringblk --filename="$name" "${common[@]}" ||
					{ cat "$work/o.json" >&2; die "ringblk bench failed ($rname)"; }
			else
				timed "$work/o.json" "$work/o.time" fio --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$img" "${common[@]}" ||
					{ cat "$work/o.json" >&2; die "fio failed ($rname)"; }
			fi
			read -r iops cpu < <(fiojson "$work/o.json" "$work/o.time")
			record "$rname" "$rep" "$side" "$iops" "$cpu"
			[ "$side" = ringblk ] && ours_iops=$iops
		done
		if [ "$have_qemu" = 1 ]; then
			count=$(python3 -c "print(max(500, int($ours_iops * $secs)))")
			qargs=(qemu-img bench -f raw -c "$count" -d "$qd" -s "$bs")
			[[ $rw == *write ]] && qargs+=(-w --pattern=90)
			[[ $rw == rand* ]] && qargs+=(-S "$((bs * 4099))")
			timed "$work/q.out" "$work/q.time" "${qargs[@]}" "$name" || { cat "$work/q.out" >&2; die "qemu-img bench failed ($rname)"; }
			read -r q_iops q_cpu < <(python3 - "$work/q.out" "$work/q.time" "$count" <<'EOF'
import re, sys
m = re.search(r"Run completed in ([0-9.]+) seconds", open(sys.argv[1]).read())
count = int(sys.argv[3])
_, u, s = (float(x) for x in open(sys.argv[2]).read().split()[-3:])
print(count / float(m.group(1)), (u + s) * 1e9 / count)
EOF
)
			record "$rname" "$rep" qemu-img "$q_iops" "$q_cpu"
		fi
	done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$raw" <<'EOF'
import statistics, sys
from collections import defaultdict
d = defaultdict(lambda: defaultdict(list))
order = []
for line in open(sys.argv[1]):
    row, rep, side, iops, cpu = line.split("\t")
    if row not in order:
        order.append(row)
    d[row][side].append((float(iops), float(cpu)))
def med(v, i):
    return statistics.median(x[i] for x in v) if v else float("nan")
noise = any(d[r]["fio-again"] for r in order)
ratio = lambda a, b: statistics.median(x[0] / y[0] for x, y in zip(a, b)) if b else float("nan")
print("| row | ringblk IOPS | fio rbd IOPS | qemu-img IOPS | ringblk/fio | ringblk/qemu-img | CPU ns/IO ringblk | fio | qemu-img |" + (" fio/fio |" if noise else ""))
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if noise else ""))
for row in order:
    s = d[row]
    o, f, q = (med(s[k], 0) for k in ("ringblk", "fio", "qemu-img"))
    oc, fc, qc = (med(s[k], 1) for k in ("ringblk", "fio", "qemu-img"))
    # Same-run ratios: the median of per-repeat ratios.
    rf, rq = ratio(s["ringblk"], s["fio"]), ratio(s["ringblk"], s["qemu-img"])
    stride = " (stride)" if row.startswith("rand") and s["qemu-img"] else ""
    extra = f" {ratio(s['fio-again'], s['fio']):.2f} |" if noise else ""
    print(f"| {row} | {o:.0f} | {f:.0f} | {q:.0f}{stride} | {rf:.2f} | {rq:.2f} | {oc:.0f} | {fc:.0f} | {qc:.0f} |{extra}")
EOF
