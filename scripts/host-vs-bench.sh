#!/usr/bin/env bash
# host-vs-bench.sh — the host API (package host) against
# `ringblk bench --ioengine=ringblk` on one cached raw file: 4 KiB random
# reads at queue depth 32, one I/O Context each. Ours submits from a host
# goroutine through a host.Queue with eventfd completions
# (BenchmarkRandRead4kQD32), the same with HostOptions.PollTime=50us, in
# polled mode from a host goroutine that runs its own Loop (Host.Drive,
# BenchmarkRandRead4kQD32Loop), and in callback mode, resubmitting from the
# Context (BenchmarkRandRead4kQD32Callback); bench runs its loop on the
# Context itself.
# Runs alternate (bench, host, bench, host, ...) and the medians are
# compared. Also prints BenchmarkQueueOverhead: the eventfd mode's cost per
# request against callback mode on the null driver.
#
# usage: scripts/host-vs-bench.sh [-d DIR] [-t SECONDS] [-r REPEATS]
#   -d DIR      where the data file lives (default /var/tmp; never tmpfs)
#   -t SECONDS  run time of each run (default 5)
#   -r REPEATS  alternations (default 3)
set -euo pipefail

dir=/var/tmp
secs=5
reps=3
while getopts "d:t:r:h" opt; do
	case $opt in
	d) dir=$OPTARG ;;
	t) secs=$OPTARG ;;
	r) reps=$OPTARG ;;
	h) sed -n '2,18p' "$0"; exit 0 ;;
	*) sed -n '15,18p' "$0" >&2; exit 2 ;;
	esac
done
prog=host-vs-bench
. "$(dirname "$0")/benchlib.sh"
check_runs "$secs" "$reps"
need python3

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$root" && go build -o "$work/ringblk" ./cmd/ringblk && go test -c -o "$work/host.test" ./host) || die "build failed"

file=$dir/hostbench-1g.dat
size=$((1 << 30))
if [ ! -f "$file" ] || [ "$(stat -c %s "$file")" -ne "$size" ]; then
	echo "creating $file (1 GiB of random data)" >&2
	head -c "$size" /dev/urandom >"$file.tmp" && mv "$file.tmp" "$file"
fi
cat "$file" >/dev/null # into the page cache

bench=()
ours=()
poll=()
loop=()
cb=()
for ((i = 0; i < reps; i++)); do
	"$work/ringblk" bench --name=rr --filename="$file" --size=1g --ioengine=ringblk --rw=randread \
		--bs=4k --iodepth=32 --runtime="$secs" --time_based --invalidate=0 --output-format=json >"$work/b.json"
	bench+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"])' "$work/b.json")")
	# b.N is sized for about $secs seconds from the bench side's rate.
	n=$(python3 -c "print(int(float('${bench[-1]}') * $secs))")
	RINGBLK_BENCH_FILE=$file "$work/host.test" -test.run '^$' -test.bench 'RandRead4kQD32$' \
		-test.benchtime="${n}x" -test.count=1 >"$work/h.txt"
	ours+=("$(awk '/BenchmarkRandRead4kQD32-/ { for (i = 1; i < NF; i++) if ($(i+1) == "IOPS") print $i }' "$work/h.txt")")
	RINGBLK_BENCH_POLLTIME=50us RINGBLK_BENCH_FILE=$file "$work/host.test" -test.run '^$' -test.bench 'RandRead4kQD32$' \
		-test.benchtime="${n}x" -test.count=1 >"$work/p.txt"
	poll+=("$(awk '/BenchmarkRandRead4kQD32-/ { for (i = 1; i < NF; i++) if ($(i+1) == "IOPS") print $i }' "$work/p.txt")")
	grep -q ' 0 allocs/op' "$work/h.txt" || { cat "$work/h.txt"; die "the host API allocated per request"; }
	RINGBLK_BENCH_FILE=$file "$work/host.test" -test.run '^$' -test.bench 'RandRead4kQD32Loop$' \
		-test.benchtime="${n}x" -test.count=1 >"$work/l.txt"
	loop+=("$(awk '/BenchmarkRandRead4kQD32Loop/ { for (i = 1; i < NF; i++) if ($(i+1) == "IOPS") print $i }' "$work/l.txt")")
	grep -q ' 0 allocs/op' "$work/l.txt" || { cat "$work/l.txt"; die "the host API (Loop) allocated per request"; }
	RINGBLK_BENCH_FILE=$file "$work/host.test" -test.run '^$' -test.bench 'RandRead4kQD32Callback$' \
		-test.benchtime="${n}x" -test.count=1 >"$work/c.txt"
	cb+=("$(awk '/BenchmarkRandRead4kQD32Callback/ { for (i = 1; i < NF; i++) if ($(i+1) == "IOPS") print $i }' "$work/c.txt")")
done
python3 - "${bench[*]}" "${ours[*]}" "${poll[*]}" "${loop[*]}" "${cb[*]}" <<'PY'
import statistics, sys
b, o, p, l, c = ([float(x) for x in a.split()] for a in sys.argv[1:6])
mb = statistics.median(b)
runs = lambda v: ', '.join(f'{x:,.0f}' for x in v)
print(f"ringblk bench --ioengine=ringblk:            {mb:,.0f} IOPS (runs {runs(b)})")
for name, v in (("host API, eventfd mode (host goroutine)", o), ("  the same, PollTime 50us", p),
                ("host API, Loop mode (host goroutine)", l), ("host API, callback mode", c)):
    m = statistics.median(v)
    print(f"{name + ':':46s}{m:,.0f} IOPS (runs {runs(v)})  ratio {m / mb:.3f}")
PY
"$work/host.test" -test.run '^$' -test.bench 'QueueOverhead' -test.benchtime=200000x | grep Benchmark
