#!/usr/bin/env bash
# nbd-vs-qemu-nbd.sh — `ringblk nbd` against `qemu-nbd --aio=io_uring` and
# nbdkit's file plugin, serving the same raw image, driven by fio's nbd
# engine (libnbd), in one run.
#
# Rows (fio): 4 KiB random reads and random writes at queue depth 32 on one
# connection; 1 MiB sequential reads at queue depth 8; 4 KiB random reads
# at QD32 per connection on 2 and 4 connections (fio numjobs, one
# connection each: multi-conn scaling). Each row runs per backing (-b) and
# per transport (-n): a Unix socket and/or TCP on 127.0.0.1.
#
# Backings: "file" is a raw file of random data under DIR (the machine's
# disk, often the noisy part); "zram" is a zram device made by the script
# (hot_add, filled with random data, removed at the end), so that the
# servers' own cost dominates, not the disk's. Servers: ringblk nbd and
# qemu-nbd run with -t -f raw --cache=MODE --aio=io_uring -e 0; nbdkit's
# file plugin with its default 16 threads. -c none (the default): ringblk
# and qemu-nbd use O_DIRECT; nbdkit has no O_DIRECT, and its cache=none
# evicts what it wrote (flushing first) but not what it read, so its READ
# rows are served from the page cache once warm: not like for like.
# -c writeback: all three go through the page cache (nbdkit cache=default).
# The servers take turns on every repeat (the order rotates).
#
# Printed per row: the median IOPS of each server (read-1m: MiB/s), the
# ratios ringblk/qemu-nbd and ringblk/nbdkit (higher is better for
# ringblk), then each server's CPU time per I/O in microseconds
# (utime+stime of the server process from /proc/PID/stat over the fio run,
# all its threads, divided by the I/Os fio completed) and ringblk's CPU
# ratio to qemu-nbd (lower is better for ringblk); then the client's CPU
# time per I/O against each server (cli:…: utime+stime of fio and its job
# processes, from getrusage of its children, over the same I/Os). With
# fio's nbd engine the client does a fixed amount of socket work per I/O
# (a send per request, receives per reply chunk, a poll), so when its
# cli:… × IOPS comes near 1e6 (one core) the row is bound by the client,
# whatever the server does. A last line gives the multi-conn scaling
# (IOPS at 2 and 4 connections over 1) per server.
#
# -P runs the servers and fio under SCHED_FIFO (chrt -f 10): on a machine
# busy with other work (compiles, tests) each of them then gets a CPU of
# its own when it runs, instead of a share of one, which approximates a
# quiet machine. It is a diagnostic: the scheduler places and preempts
# FIFO tasks differently from normal ones, so quote such rows as -P rows.
#
# usage: scripts/nbd-vs-qemu-nbd.sh [-d DIR] [-t SECONDS] [-r REPEATS] [-s SIZE_MIB]
#                                    [-b "file zram"] [-n "unix tcp"] [-S "ringblk qemu-nbd nbdkit"]
#                                    [-R "randread-4k randwrite-4k read-1m randread-4k-2c randread-4k-4c"] [-c none|writeback] [-P]
#   -d DIR       where the file image lives (default /var/tmp; never tmpfs)
#   -t SECONDS   run time of each fio run (default 10)
#   -r REPEATS   interleaved repetitions (default 3)
#   -s SIZE_MIB  image size in MiB (default 256; the zram device holds it in RAM)
#   -b BACKINGS  file, zram or both (default "file zram"; zram needs root)
#   -n NETS      unix, tcp or both (default "unix tcp")
#   -S SERVERS   which servers (default "ringblk qemu-nbd nbdkit"; ringblk first);
#                ringblk-base is a second ringblk, the binary $RINGBLK_BASE (say a
#                build of main), for before/after figures in the same run
#   -R ROWS      which rows (default all five, as listed above); the target rows
#                alone: -R "randread-4k randwrite-4k read-1m randread-4k-4c"
#   -c CACHE     none (default) or writeback, as above; with writeback the image is
#                read once after set-up, so that reads are page-cache hits
#   -P           servers and fio under SCHED_FIFO (needs root; see above)
#
# Needs go, fio with the nbd engine (fio 3.33 has it), qemu-nbd, nbdkit
# with its file plugin, python3. The image and the zram device are removed
# at the end, also on error or ^C.
set -euo pipefail

dir=/var/tmp
secs=10
reps=3
size=256
backings="file zram"
nets="unix tcp"
servers="ringblk qemu-nbd nbdkit"
allrows="randread-4k randwrite-4k read-1m randread-4k-2c randread-4k-4c"
rows=$allrows
cache=none
rt=()
usage() { sed -n '/^# usage:/,/^#   -c/p' "$0" >&2; exit 2; }
while getopts "d:t:r:s:b:n:S:R:c:Ph" opt; do
	case $opt in
	d) dir=$OPTARG ;;
	t) secs=$OPTARG ;;
	r) reps=$OPTARG ;;
	s) size=$OPTARG ;;
	b) backings=$OPTARG ;;
	n) nets=$OPTARG ;;
	S) servers=$OPTARG ;;
	R) rows=$OPTARG ;;
	c) cache=$OPTARG ;;
	P) rt=(chrt -f 10) ;;
	h) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
	*) usage ;;
	esac
done
for b in $backings; do case $b in file | zram) ;; *) usage ;; esac; done
for n in $nets; do case $n in unix | tcp) ;; *) usage ;; esac; done
for s in $servers; do case $s in ringblk | ringblk-base | qemu-nbd | nbdkit) ;; *) usage ;; esac; done
case " $servers " in *" ringblk-base "*) [ -x "${RINGBLK_BASE:-}" ] || { echo "ringblk-base needs RINGBLK_BASE=<ringblk binary>" >&2; exit 2; } ;; esac
for r in $rows; do case " $allrows " in *" $r "*) ;; *) usage ;; esac; done
case $cache in none) kcache=none ;; writeback) kcache=default ;; *) usage ;; esac

die() { echo "nbd-vs-qemu-nbd: $*" >&2; exit 1; }
need=(go fio python3)
for s in $servers; do case $s in ringblk | ringblk-base) ;; *) need+=("$s") ;; esac; done
for c in "${need[@]}"; do
	command -v "$c" >/dev/null 2>&1 || die "$c not found (scripts/deps.sh installs the Debian packages)"
done
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine"
case " $servers " in *" nbdkit "*) nbdkit file --version >/dev/null 2>&1 || die "nbdkit has no file plugin" ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "$dir/nbdbench.XXXXXX")
server=
zdev=
cleanup() {
	if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
	if [ -n "$zdev" ]; then
		echo 1 >"/sys/block/zram$zdev/reset" 2>/dev/null || true
		echo "$zdev" >/sys/class/zram-control/hot_remove 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$root" && go build -o "$work/ringblk" ./cmd/ringblk) || die "build failed"
sock=$work/nbd.sock
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# dropcache FILE: written back and out of the page cache. O_DIRECT reads
# of a range with dirty pages wait for writeback (io_uring punts them to
# its workers), and nbdkit would otherwise read cached pages.
dropcache() {
	python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}

# setup_image BACKING: sets img.
setup_image() {
	case $1 in
	file)
		img=$work/disk.raw
		# Fully allocated random data, so reads hit the file and no
		# server serves holes.
		head -c "$((size << 20))" /dev/urandom >"$img"
		;;
	zram)
		if [ ! -e /sys/class/zram-control/hot_add ]; then
			command -v modprobe >/dev/null 2>&1 && modprobe zram 2>/dev/null || true
		fi
		[ -e /sys/class/zram-control/hot_add ] || die "no zram (modprobe zram, as root)"
		zdev=$(cat /sys/class/zram-control/hot_add) || die "zram hot_add failed (root?)"
		echo "$((size << 20))" >"/sys/block/zram$zdev/disksize"
		img=/dev/zram$zdev
		# Random data does not compress: zram keeps it as it is, so
		# reads copy real pages.
		dd if=/dev/urandom of="$img" bs=1M count="$size" oflag=direct status=none
		;;
	esac
	dropcache "$img"
	# Page-cache rows: every block cached before the first run.
	if [ "$cache" = writeback ]; then cat "$img" >/dev/null; fi
}

teardown_image() {
	if [ -n "$zdev" ]; then
		echo 1 >"/sys/block/zram$zdev/reset"
		echo "$zdev" >/sys/class/zram-control/hot_remove
		zdev=
	else
		rm -f "$img"
	fi
}

start() { # server net
	local addr
	rm -f "$sock"
	if [ "$2" = unix ]; then
		addr=(-k "$sock")
	else
		addr=(-b 127.0.0.1 -p "$port")
	fi
	case $1 in
	# stderr to a log: the readiness probe below makes them complain.
	ringblk) "${rt[@]}" "$work/ringblk" nbd -t -f raw --cache="$cache" --aio=io_uring -e 0 "${addr[@]}" "$img" 2>"$work/server.log" & ;;
	ringblk-base) "${rt[@]}" "$RINGBLK_BASE" nbd -t -f raw --cache="$cache" --aio=io_uring -e 0 "${addr[@]}" "$img" 2>"$work/server.log" & ;;
	qemu-nbd) "${rt[@]}" qemu-nbd -t -f raw --cache="$cache" --aio=io_uring -e 0 "${addr[@]}" "$img" 2>"$work/server.log" & ;;
	nbdkit)
		if [ "$2" = unix ]; then addr=(-U "$sock"); else addr=(-i 127.0.0.1 -p "$port"); fi
		"${rt[@]}" nbdkit -f "${addr[@]}" file "$img" cache="$kcache" 2>"$work/server.log" &
		;;
	esac
	server=$!
	for _ in $(seq 200); do
		if [ "$2" = unix ]; then
			[ -S "$sock" ] && return 0
		else
			python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$port" 2>/dev/null && return 0
		fi
		kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; die "$1 exited at start"; }
		sleep 0.05
	done
	die "$1 did not start listening"
}

stop() {
	kill "$server" 2>/dev/null || true
	wait "$server" 2>/dev/null || true
	server=
}

# cpu_ticks PID: the process's utime+stime (all threads) in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # server net rw bs iodepth jobs -> "IOPS CPU_US_PER_IO CLIENT_CPU_US_PER_IO"
	local srv=$1 net=$2 uri t0 t1
	shift 2
	start "$srv" "$net"
	if [ "$net" = unix ]; then uri="nbd+unix:///?socket=$sock"; else uri="nbd://127.0.0.1:$port/"; fi
	t0=$(cpu_ticks "$server")
	# The wrapper prints the CPU seconds of fio and of the job processes
	# it waited for (getrusage of its children).
	"${rt[@]}" python3 -c 'import resource, subprocess, sys
r = subprocess.call(sys.argv[2:])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%f\n" % (u.ru_utime + u.ru_stime))
sys.exit(r)' "$work/fio.cpu" fio --name=nbd --ioengine=nbd --uri="$uri" --rw="$1" --bs="$2" \
		--iodepth="$3" --numjobs="$4" --group_reporting --size="${size}M" --runtime="$secs" --time_based \
		--randrepeat=0 --output-format=json --output="$work/fio.json" >"$work/fio.err" 2>&1 ||
		{ cat "$work/fio.err" >&2; stop; die "fio failed against $srv ($net)"; }
	t1=$(cpu_ticks "$server")
	stop
	python3 - "$work/fio.json" "$((t1 - t0))" "$hz" "$work/fio.cpu" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
cpu_us = int(sys.argv[2]) * 1e6 / int(sys.argv[3])
cli_us = float(open(sys.argv[4]).read()) * 1e6
print(int(j["read"]["iops"] + j["write"]["iops"]), "%.2f" % (cpu_us / ios if ios else 0), "%.2f" % (cli_us / ios if ios else 0))
PY
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { python3 -c "print('%.2f' % ($1/$2) if $2 else '-')"; }

read -r -a srvs <<<"$servers"
nsrv=${#srvs[@]}
has() { case " $servers " in *" $1 "*) return 0 ;; esac; return 1; }
abbr() { case $1 in ringblk) echo rb ;; ringblk-base) echo rb0 ;; qemu-nbd) echo q ;; nbdkit) echo k ;; esac; }

echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# ${size} MiB raw image of random data; fio nbd engine; ${secs}s runs, median of ${reps} interleaved repeats"
echo "# ringblk and qemu-nbd: --cache=$cache --aio=io_uring; nbdkit file plugin: cache=$kcache (no O_DIRECT)"
echo "# IOPS per server (read-1m: MiB/s); rb/q = ringblk/qemu-nbd, rb/k = ringblk/nbdkit (higher: ringblk faster)"
echo "# us/io = server CPU (utime+stime, all threads) per I/O; cpu rb/q (lower: ringblk cheaper)"
echo "# cli = fio's CPU per I/O against that server (near 1e6/IOPS: the client is the bound)"
[ ${#rt[@]} -eq 0 ] || echo "# -P: servers and fio under SCHED_FIFO (${rt[*]})"
declare -A iops
for backing in $backings; do
	setup_image "$backing"
	for net in $nets; do
		echo
		echo "## backing=$backing ($img) net=$net"
		hdr=$(printf '%-16s' row)
		for s in "${srvs[@]}"; do hdr+=$(printf ' %9s' "${s/ringblk-base/rb-base}"); done
		hdr+=$(printf ' %6s %6s' rb/q rb/k)
		for s in "${srvs[@]}"; do hdr+=$(printf ' %9s' "us/io:$(abbr "$s")"); done
		hdr+=$(printf ' %8s' "cpu rb/q")
		for s in "${srvs[@]}"; do hdr+=$(printf ' %9s' "cli:$(abbr "$s")"); done
		echo "$hdr"
		# name rw bs iodepth jobs
		for spec in "randread-4k randread 4k 32 1" "randwrite-4k randwrite 4k 32 1" "read-1m read 1m 8 1" \
			"randread-4k-2c randread 4k 32 2" "randread-4k-4c randread 4k 32 4"; do
			set -- $spec
			name=$1
			shift
			case " $rows " in *" $name "*) ;; *) continue ;; esac
			declare -A res=() cpu=() cli=()
			for i in $(seq "$reps"); do
				for k in $(seq 0 $((nsrv - 1))); do
					s=${srvs[$(((k + i - 1) % nsrv))]}
					read -r a b c <<<"$(run "$s" "$net" "$@")"
					res[$s]+=" $a"
					cpu[$s]+=" $b"
					cli[$s]+=" $c"
				done
			done
			declare -A mi=() mc=()
			line=$(printf '%-16s' "$name")
			for s in "${srvs[@]}"; do
				mi[$s]=$(median ${res[$s]})
				mc[$s]=$(median ${cpu[$s]})
				iops[$backing/$net/$name/$s]=${mi[$s]}
				line+=$(printf ' %9d' "${mi[$s]}")
			done
			rq=- rk=- cq=-
			if has ringblk && has qemu-nbd; then
				rq=$(ratio "${mi[ringblk]}" "${mi[qemu-nbd]}")
				cq=$(ratio "${mc[ringblk]}" "${mc[qemu-nbd]}")
			fi
			has ringblk && has nbdkit && rk=$(ratio "${mi[ringblk]}" "${mi[nbdkit]}")
			line+=$(printf ' %6s %6s' "$rq" "$rk")
			for s in "${srvs[@]}"; do line+=$(printf ' %9s' "${mc[$s]}"); done
			line+=$(printf ' %8s' "$cq")
			for s in "${srvs[@]}"; do line+=$(printf ' %9s' "$(median ${cli[$s]})"); done
			echo "$line"
		done
		line="scaling 1/2/4 conns (randread-4k IOPS at 2 and 4 over 1):"
		for s in "${srvs[@]}"; do
			one=${iops[$backing/$net/randread-4k/$s]:-}
			[ -n "$one" ] || continue
			two=- four=-
			[ -z "${iops[$backing/$net/randread-4k-2c/$s]:-}" ] || two=$(ratio "${iops[$backing/$net/randread-4k-2c/$s]}" "$one")x
			[ -z "${iops[$backing/$net/randread-4k-4c/$s]:-}" ] || four=$(ratio "${iops[$backing/$net/randread-4k-4c/$s]}" "$one")x
			line+=" $s $two/$four"
		done
		echo "$line"
	done
	teardown_image
done
echo
echo "# done $(date -u '+%H:%M:%S UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"
