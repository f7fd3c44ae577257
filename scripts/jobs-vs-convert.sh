#!/usr/bin/env bash
# jobs-vs-convert.sh — mirror and backup against `ringblk convert` on the
# same image, idle (issue 17: jobs copy at >= 0.9x convert's throughput).
#
# Every side is one process timed from start to exit, with the same open
# cost: `ringblk convert -f FMT -O raw SRC DST` (creates DST, copies,
# flushes, closes) against the internal/imgcmd test binary's
# TestJobCopyRunner (RINGBLK_JOBCOPY=mirror|backup), which opens SRC the
# way convert does, creates DST raw at the same size, runs the job (mirror
# sync full to ready then complete; backup sync full), flushes and closes.
# Rounds are interleaved and the order of the three sides rotates with
# the round; before each run DST is removed and `sync` writes back what
# the previous run dirtied (outside the timing); DST is then compared
# with the source's data (outside the timing). The page cache holds SRC
# (read once before the first round). Reported: each side's median time
# and MB/s, and the median of the per-round ratios of throughput to
# convert's.
#
# usage: scripts/jobs-vs-convert.sh [-d DIR] [-s MIB] [-r ROUNDS] [-f raw|qcow2]
#   -d DIR     where the files live (default /var/tmp/jobs-vs-convert; disk, never tmpfs)
#   -s MIB     image size in MiB (default 256; random data)
#   -r ROUNDS  interleaved rounds (default 5)
#   -f FMT     format of SRC (default raw; qcow2 converts the random raw file first)
#
# Run under the shared lock: flock /work/wt/bench.lock scripts/jobs-vs-convert.sh
# Needs go, python3, and qemu-img for -f qcow2. Removes DIR at the end.
set -euo pipefail

dir=/var/tmp/jobs-vs-convert
mib=256
rounds=5
fmt=raw
while getopts "d:s:r:f:" o; do
	case $o in
	d) dir=$OPTARG ;;
	s) mib=$OPTARG ;;
	r) rounds=$OPTARG ;;
	f) fmt=$OPTARG ;;
	*) sed -n '2,25p' "$0"; exit 2 ;;
	esac
done
case $fmt in raw|qcow2) ;; *) echo "jobs-vs-convert: -f raw or qcow2" >&2; exit 2 ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
echo "building..." >&2
(cd "$root" && go build -o "$dir/ringblk" ./cmd/ringblk && go test -c -o "$dir/imgcmd.test" ./internal/imgcmd)

src=$dir/src.$fmt
dst=$dir/dst.raw
head -c $((mib << 20)) /dev/urandom > "$dir/src.raw"
if [ "$fmt" = qcow2 ]; then
	qemu-img convert -f raw -O qcow2 "$dir/src.raw" "$src" # src.raw stays: the reference
fi
cat "$src" > /dev/null

run() { # side -> seconds on stdout
	rm -f "$dst"
	sync
	local t0 t1
	t0=$(date +%s.%N)
	case $1 in
	convert) "$dir/ringblk" convert -f "$fmt" -O raw "$src" "$dst" ;;
	*) RINGBLK_JOBCOPY=$1 RINGBLK_JOBCOPY_SRC=$src RINGBLK_JOBCOPY_FMT=$fmt RINGBLK_JOBCOPY_DST=$dst \
		"$dir/imgcmd.test" -test.run '^TestJobCopyRunner$' -test.count 1 > "$dir/out.txt" ||
		{ cat "$dir/out.txt" >&2; exit 1; } ;;
	esac
	t1=$(date +%s.%N)
	if ! cmp -s "$dir/src.raw" "$dst"; then
		echo "jobs-vs-convert: $1 produced a different image" >&2
		exit 1
	fi
	echo "$t0 $t1" | awk '{printf "%.4f\n", $2 - $1}'
}

sides=(convert mirror backup)
results=$dir/results.txt
: > "$results"
echo "$(date -u '+%F %T UTC'); $(uptime | sed 's/.*load/load/'); ${mib} MiB $fmt -> raw, $rounds rounds" >&2
for ((r = 0; r < rounds; r++)); do
	for ((k = 0; k < 3; k++)); do
		s=${sides[$(((r + k) % 3))]}
		echo "$r $s $(run "$s")" >> "$results"
	done
done
echo "end $(date -u '+%F %T UTC'); $(uptime | sed 's/.*load/load/')" >&2

python3 - "$results" "$mib" <<'PY'
import sys, statistics
path, mib = sys.argv[1], int(sys.argv[2])
rounds = {}
for line in open(path):
    r, side, secs = line.split()
    rounds.setdefault(int(r), {})[side] = float(secs)
mb = mib * 1048576 / 1e6
print("| side | median time | median MB/s | median ratio to convert (per round) | times |")
print("|---|---|---|---|---|")
for side in ("convert", "mirror", "backup"):
    ts = [rounds[r][side] for r in sorted(rounds)]
    ratios = [rounds[r]["convert"] / rounds[r][side] for r in sorted(rounds)]
    print(f"| {side} | {statistics.median(ts):.3f} s | {mb / statistics.median(ts):.0f} | "
          f"{statistics.median(ratios):.2f} | {' '.join(f'{t:.3f}' for t in ts)} |")
PY
