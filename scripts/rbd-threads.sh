#!/usr/bin/env bash
# rbd-threads.sh — where a benchmark process's CPU goes on an RBD image:
# runs one side (ringblk bench with ioengine=ringblk, or fio's rbd engine)
# for SECONDS and prints the CPU of each thread name (librbd's messenger,
# io_context_pool, the engine's own threads, ...) in ticks and in µs per
# I/O, sampled from /proc/PID/task/*/stat between second 1 and SECONDS-1.
#
# usage: scripts/rbd-threads.sh -c CEPH_CONF [-b RINGBLK] [-p POOL] [-i IMAGE]
#            [-t SECONDS] [-w RW] [-s BS] [-q QD] ringblk|fio [EXTRA ARGS...]
#   -c CONF   the cluster's ceph.conf (scripts/ceph-single.sh start DIR prints it)
#   -b BIN    ringblk binary built with -tags rbd (default: ./ringblk)
#   -p, -i    pool and image (default rbd/bench; the image must exist)
#   -t SECS   run time (default 6, at least 3)
#   -w RW     fio rw= (default randwrite); -s BS: bs= (default 4096);
#             -q QD: iodepth (default 32)
#   EXTRA     appended to the side's command line (e.g. --busy_poll=1 for fio)
#
# One side per call: run the two back to back and compare within a pair
# (a cluster moves: CEPH_OSD_STORE=bluestore keeps its speed best).
set -euo pipefail
conf= bin=./ringblk pool=rbd image=bench secs=6 rw=randwrite bs=4096 qd=32
while getopts "c:b:p:i:t:w:s:q:h" opt; do
	case $opt in
	c) conf=$OPTARG ;; b) bin=$OPTARG ;; p) pool=$OPTARG ;; i) image=$OPTARG ;;
	t) secs=$OPTARG ;; w) rw=$OPTARG ;; s) bs=$OPTARG ;; q) qd=$OPTARG ;;
	h) sed -n '2,20p' "$0"; exit 0 ;;
	*) sed -n '8,16p' "$0" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
side=${1:-}
[ -n "$conf" ] && [ -n "$side" ] || { sed -n '8,16p' "$0" >&2; exit 2; }
shift
[ "$secs" -ge 3 ] || { echo "rbd-threads: -t must be at least 3" >&2; exit 2; }
export CEPH_CONF=$conf
out=$(mktemp); trap 'rm -f "$out"' EXIT
common=(--name=w "--rw=$rw" "--bs=$bs" "--iodepth=$qd" "--runtime=$secs" --time_based
	--norandommap --randrepeat=0 --output-format=json)
case $side in
ringblk) "$bin" bench --ioengine=ringblk "--filename=rbd:$pool/$image:conf=$conf" "${common[@]}" "$@" > "$out" 2>&1 & ;;
fio) fio --ioengine=rbd --clientname=admin "--pool=$pool" "--rbdname=$image" "${common[@]}" "$@" > "$out" 2>&1 & ;;
*) echo "rbd-threads: side must be ringblk or fio, not $side" >&2; exit 2 ;;
esac
pid=$!
snap() {
	for t in /proc/"$proc"/task/*; do
		# A thread may end between the listing and the reads: skip it.
		# comm may hold spaces; the fields after stat's closing paren are fixed.
		c=$(tr ' ' _ < "$t/comm" 2>/dev/null) || continue
		v=$(sed 's/.*) //' "$t/stat" 2>/dev/null | awk '{print $12+$13}') || continue
		[ -n "$c" ] && [ -n "$v" ] && printf '%s %s\n' "$c" "$v"
	done | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort
}
sleep 1
proc=$pid
if [ "$side" = fio ]; then # a job in a process of its own, where fio forks one
	proc=$(pgrep -P "$pid" -n fio || echo "$pid")
fi
if ! kill -0 "$proc" 2>/dev/null; then
	wait "$pid" || true
	echo "rbd-threads: the $side run ended early:" >&2; tail -5 "$out" >&2; exit 1
fi
a=$(snap); sleep $((secs - 2)); b=$(snap)
wait "$pid" || { echo "rbd-threads: the $side run failed:" >&2; tail -5 "$out" >&2; exit 1; }
python3 - "$out" "$((secs - 2))" "$(getconf CLK_TCK)" "$side" <(echo "$a") <(echo "$b") <<'PY'
import json, sys
out, window, hz, side, fa, fb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
t = open(out).read()
j = json.loads(t[t.index("{"):])["jobs"][0]
iops = j["read"]["iops"] + j["write"]["iops"]
def load(f):
    return {k: int(v) for k, v in (l.split() for l in open(f) if l.strip())}
a, b = load(fa), load(fb)
print(f"{side}: {iops:.0f} IOPS; CPU per thread name over {window} s:")
per_io = lambda d: d * 1e6 / hz / (iops * window) if iops else 0.0
total = 0
for k in sorted(b, key=lambda k: -(b[k] - a.get(k, 0))):
    d = b[k] - a.get(k, 0)
    total += d
    if d:
        print(f"  {k:<22} {d:5d} ticks  {per_io(d):7.1f} µs/IO")
print(f"  {'(all threads)':<22} {total:5d} ticks  {per_io(total):7.1f} µs/IO")
PY
