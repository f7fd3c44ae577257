#!/usr/bin/env bash
# nbd-vs-qemu-nbd.sh — `ringblk nbd` against `qemu-nbd --aio=io_uring`
# serving the same raw image over a Unix socket, driven by fio's nbd
# engine (libnbd). Rows: 4 KiB random reads and random writes at queue
# depth 32 on one connection; 1 MiB sequential reads at queue depth 8; 4
# KiB random reads at QD32 per connection on 2 and 4 connections (fio
# numjobs, one connection each: multi-conn scaling). Each server runs with
# --cache=none (O_DIRECT on the image), -t (persistent), -e 0 and the same
# export; the two servers take turns on every repeat. Printed per row: the
# median IOPS per side and their ratio (ringblk/qemu-nbd, higher is
# better), and the server's CPU time per I/O in microseconds (utime+stime
# from /proc/PID/stat over the run, divided by the I/Os fio completed)
# with its ratio (lower is better).
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
	h) sed -n '2,22p' "$0"; exit 0 ;;
	*) sed -n '15,19p' "$0" >&2; exit 2 ;;
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
# Written back and out of the page cache: O_DIRECT reads of a range with
# dirty pages wait for writeback (io_uring punts them to its workers).
python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$img"
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

# cpu_ticks PID: the process's utime+stime in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # side rw bs iodepth jobs -> "IOPS CPU_US_PER_IO"
	start "$1"
	local t0 t1
	t0=$(cpu_ticks "$server")
	fio --name=nbd --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw="$2" --bs="$3" \
		--iodepth="$4" --numjobs="$5" --group_reporting --size="${size}M" --runtime="$secs" --time_based \
		--randrepeat=0 --output-format=json --output="$work/fio.json" >"$work/fio.err" 2>&1 ||
		{ cat "$work/fio.err" >&2; stop; die "fio failed against $1"; }
	t1=$(cpu_ticks "$server")
	stop
	python3 - "$work/fio.json" "$((t1 - t0))" "$hz" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
cpu_us = int(sys.argv[2]) * 1e6 / int(sys.argv[3])
print(int(j["read"]["iops"] + j["write"]["iops"]), "%.2f" % (cpu_us / ios if ios else 0))
PY
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { python3 -c "print('%.2f' % ($1/$2 if $2 else 0))"; }

printf '%-16s %10s %10s %6s %10s %10s %6s\n' row ringblk qemu-nbd ratio "rb us/io" "q us/io" ratio
# name rw bs iodepth jobs
for spec in "randread-4k randread 4k 32 1" "randwrite-4k randwrite 4k 32 1" "read-1m read 1m 8 1" \
	"randread-4k-2c randread 4k 32 2" "randread-4k-4c randread 4k 32 4"; do
	set -- $spec
	name=$1
	shift
	r=() q=() rc=() qc=()
	for i in $(seq "$reps"); do
		if [ $((i % 2)) -eq 1 ]; then
			read -r a b <<<"$(run ringblk "$@")"; r+=("$a"); rc+=("$b")
			read -r a b <<<"$(run qemu-nbd "$@")"; q+=("$a"); qc+=("$b")
		else
			read -r a b <<<"$(run qemu-nbd "$@")"; q+=("$a"); qc+=("$b")
			read -r a b <<<"$(run ringblk "$@")"; r+=("$a"); rc+=("$b")
		fi
	done
	mr=$(median "${r[@]}") mq=$(median "${q[@]}") mrc=$(median "${rc[@]}") mqc=$(median "${qc[@]}")
	printf '%-16s %10d %10d %6s %10s %10s %6s\n' "$name" "$mr" "$mq" "$(ratio "$mr" "$mq")" "$mrc" "$mqc" "$(ratio "$mrc" "$mqc")"
done
echo "(IOPS are medians of ${reps} runs of ${secs}s; read-1m IOPS = MiB/s; ${size} MiB raw image, --cache=none, Unix socket; load $(cut -d' ' -f1-3 /proc/loadavg))"
