# benchlib.sh — the argument and machine checks the side-by-side benchmark
# scripts share. Source it with the script's name for messages:
#   prog=raw-vs-fio; . "$(dirname "$0")/benchlib.sh"
# shellcheck shell=bash

die() { echo "$prog: $*" >&2; exit 1; }

# check_runs SECONDS REPEATS: both whole and positive.
check_runs() {
	[[ $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || die "-t wants whole seconds, got '$1'"
	[[ $2 =~ ^[0-9]+$ && $2 -gt 0 ]] || die "-r wants a positive count, got '$2'"
}

# check_disk_dir DIR: DIR exists and is not tmpfs/ramfs, where io_uring
# punts reads to its workers and O_DIRECT is refused (not a disk's numbers).
check_disk_dir() {
	[ -d "$1" ] || die "no directory $1"
	local fstype
	fstype=$(df --output=fstype "$1" | tail -n 1)
	case "$fstype" in
	tmpfs | ramfs) die "$1 is $fstype: io_uring punts its reads to workers and O_DIRECT is refused; use a disk filesystem (-d)" ;;
	esac
}

# need TOOL...: each on PATH; "gnu-time" stands for /usr/bin/time, which
# measures each side's CPU.
need() {
	local tool
	for tool in "$@"; do
		if [ "$tool" = gnu-time ]; then
			[ -x /usr/bin/time ] || die "GNU time (/usr/bin/time) is required to measure CPU"
		else
			command -v "$tool" >/dev/null || die "$tool is required"
		fi
	done
}
