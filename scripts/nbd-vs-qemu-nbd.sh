#!/usr/bin/env bash
# nbd-vs-qemu-nbd.sh — `ringblk nbd` against `qemu-nbd --aio=io_uring`
# serving the same raw image over a Unix socket, driven by fio's nbd
# engine (libnbd): 4 KiB random reads and random writes at queue depth 32,
# one job. Each server runs with --cache=none (O_DIRECT on the image),
# -t (persistent) and the same export; the two servers take turns on every
# repeat, and the median IOPS per side and their ratio (ringblk/qemu-nbd)
# are printed.
#
# usage: scripts/nbd-vs-qemu-nbd.sh [-d DIR] [-t SECONDS] [-r REPEATS] [-s SIZE_MIB]
#   -d DIR       where the image lives (default /var/tmp; never tmpfs)
#   -t SECONDS   run time of each fio run (default 10)
#   -r REPEATS   interleaved repetitions (default 3)
#   -s SIZE_MIB  image size in MiB (default 256)
#
# Needs go, fio with the nbd engine (fio 3.33 has it), qemu-nbd and
# qemu-img. The image is removed at the end.
set -euo pipefail

dir=/var/tmp
secs=10
reps=3
size=256
while getopts "d:t:r:s:h" opt; do
	case $opt in
	d) dir=$OPTARG ;;
	t) secs=$OPTARG ;;
	r) reps=$OPTARG ;;
	s) size=$OPTARG ;;
	h) sed -n '2,17p' "$0"; exit 0 ;;
	*) sed -n '10,14p' "$0" >&2; exit 2 ;;
	esac
done

die() { echo "nbd-vs-qemu-nbd: $*" >&2; exit 1; }
for c in go fio qemu-nbd qemu-img python3; do
	command -v "$c" >/dev/null 2>&1 || die "$c not found (scripts/deps.sh installs the Debian packages)"
done
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine"

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "$dir/nbdbench.XXXXXX")
server=
cleanup() {
	if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && go build -o "$work/ringblk" ./cmd/ringblk) || die "build failed"
img=$work/disk.raw
# Fully allocated random data, so reads hit the file and no side serves holes.
head -c "$((size << 20))" /dev/urandom >"$img"
sock=$work/nbd.sock

start() { # side
	rm -f "$sock"
	case $1 in
	ringblk) "$work/ringblk" nbd -t -f raw --cache=none --aio=io_uring -e 0 -k "$sock" "$img" & ;;
	qemu-nbd) qemu-nbd -t -f raw --cache=none --aio=io_uring -e 0 -k "$sock" "$img" & ;;
	esac
	server=$!
	for _ in $(seq 200); do
		[ -S "$sock" ] && return 0
		sleep 0.05
	done
	die "$1 did not create its socket"
}

stop() {
	kill "$server" 2>/dev/null || true
	wait "$server" 2>/dev/null || true
	server=
}

run() { # side rw -> IOPS
	start "$1"
	fio --name=nbd --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw="$2" --bs=4k \
		--iodepth=32 --numjobs=1 --size="${size}M" --runtime="$secs" --time_based \
		--randrepeat=0 --output-format=json --output="$work/fio.json" >"$work/fio.err" 2>&1 ||
		{ cat "$work/fio.err" >&2; stop; die "fio failed against $1"; }
	stop
	python3 - "$work/fio.json" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]
print(int(j["read"]["iops"] + j["write"]["iops"]))
PY
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-10s %12s %12s %8s\n' rw ringblk qemu-nbd ratio
for rw in randread randwrite; do
	r=() q=()
	for i in $(seq "$reps"); do
		if [ $((i % 2)) -eq 1 ]; then
			r+=("$(run ringblk "$rw")")
			q+=("$(run qemu-nbd "$rw")")
		else
			q+=("$(run qemu-nbd "$rw")")
			r+=("$(run ringblk "$rw")")
		fi
	done
	mr=$(median "${r[@]}")
	mq=$(median "${q[@]}")
	printf '%-10s %12d %12d %8.2f\n' "$rw" "$mr" "$mq" "$(python3 -c "print($mr/$mq if $mq else 0)")"
done
echo "(4 KiB, QD32, 1 job, ${secs}s x $reps, ${size} MiB raw image, --cache=none, Unix socket; load $(cut -d' ' -f1-3 /proc/loadavg))"
