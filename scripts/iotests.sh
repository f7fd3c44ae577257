#!/usr/bin/env bash
# iotests.sh — QEMU 7.2's own qemu-iotests against ringblk (issue #22).
#
# 1. Fetches tests/qemu-iotests from Debian 12's qemu source package with
#    apt-get source under a PRIVATE apt configuration (its own sources.list
#    with deb-src lines, its own state and cache directories under
#    $IOTESTS_CACHE; /etc/apt is not touched), once: the extracted test
#    directory is kept in the cache, so reruns do not fetch again.
# 2. Selects the bash tests that need only qemu-img and qemu-io, for
#    -qcow2 and -raw over protocol file: a test is taken when its
#    _supported_fmt names the format (or generic), its _supported_proto
#    names file (or generic), and it neither sources common.qemu,
#    common.nbd or common.tls nor uses $QEMU_PROG, $QEMU_NBD, the storage
#    daemon or NBD; and the storage daemon's and qemu-nbd's own tests
#    ($QSD, common.nbd; no qemu-system, no TLS: qsd-jobs, 058,
#    nbd-qemu-allocation, qemu-img-bitmaps, 241). Python tests are not
#    taken.
# 3. Runs QEMU's check on that selection with ringblk's drop-in links
#    (ringblk install-links) as QEMU_IMG_PROG, QEMU_IO_PROG, QEMU_NBD_PROG,
#    QSD_PROG, and (IOTESTS_PROGS=both, the default) once more with the
#    real qemu-img/qemu-io/qemu-storage-daemon, QEMU's own baseline on
#    this machine. QEMU_PROG is a
#    stub (check insists on a qemu-system binary; the selection never runs
#    it).
# 4. Prints pass/fail/not-run totals per side and the failing tests; the
#    check logs (with each failure's diff) stay in $IOTESTS_CACHE/results.
#
# Usage: scripts/iotests.sh [-qcow2|-raw] [TEST...]
#   no format: both formats; no TEST: the whole selection.
# Environment: IOTESTS_CACHE (default /var/tmp/ringblk-iotests),
#   IOTESTS_PROGS=both|ringblk|qemu, RINGBLK (a built binary; default: go
#   build), IOTESTS_JOBS (check -j, default 1), IOTESTS_RESULTS (where
#   the check logs go; default $IOTESTS_CACHE/results).
# Slow (minutes); not part of make test. Heavy: run it under
# flock /work/wt/bench.lock on a shared machine.
set -euo pipefail

cache=${IOTESTS_CACHE:-/var/tmp/ringblk-iotests}
progs=${IOTESTS_PROGS:-both}
jobs=${IOTESTS_JOBS:-1}
repo=$(cd "$(dirname "$0")/.." && pwd)
formats=()
tests=()
for a in "$@"; do
	case $a in
	-qcow2 | -raw) formats+=("${a#-}") ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) echo "iotests.sh: unknown option $a" >&2; exit 2 ;;
	*) tests+=("$a") ;;
	esac
done
[ ${#formats[@]} -gt 0 ] || formats=(qcow2 raw)

iotests=$cache/tree/tests/qemu-iotests

# fetch: the test directory of the qemu source package, via a private apt.
fetch() {
	local apt=$cache/apt src=$cache/src
	mkdir -p "$apt/etc/sources.list.d" "$apt/etc/preferences.d" \
		"$apt/state/lists/partial" "$apt/cache/archives/partial" "$src"
	# The suites the machine's own sources use (Debian 12), as deb-src.
	local key=/usr/share/keyrings/debian-archive-keyring.gpg
	cat >"$apt/etc/sources.list" <<EOF
deb-src [signed-by=$key] http://deb.debian.org/debian bookworm main
deb-src [signed-by=$key] http://deb.debian.org/debian bookworm-updates main
deb-src [signed-by=$key] http://deb.debian.org/debian-security bookworm-security main
EOF
	: >"$apt/state/status"
	local o=(-o "Dir::Etc::sourcelist=$apt/etc/sources.list"
		-o "Dir::Etc::sourceparts=$apt/etc/sources.list.d"
		-o "Dir::Etc::preferencesparts=$apt/etc/preferences.d"
		-o "Dir::State=$apt/state" -o "Dir::State::status=$apt/state/status"
		-o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=$(id -un)")
	echo "iotests: fetching the qemu source package (private apt configuration in $apt)" >&2
	apt-get "${o[@]}" -qq update
	# The source of the installed qemu-utils when it is a 7.2 build, so
	# the tests match the baseline binaries; otherwise the newest 7.2.
	local want=qemu
	local v
	v=$(dpkg-query -W -f='${source:Version}' qemu-utils 2>/dev/null || true)
	case $v in 1:7.2*) want="qemu=$v" ;; esac
	(cd "$src" && apt-get "${o[@]}" -qq source --download-only "$want")
	local dsc
	dsc=$(ls "$src"/qemu_*.dsc | tail -1)
	rm -rf "$src/tree" "$cache/tree.new"
	dpkg-source --no-check -x "$dsc" "$src/tree" >/dev/null
	# Keep only what check needs: the test directory and the python
	# modules it puts on PYTHONPATH (../../python).
	mkdir -p "$cache/tree.new/tests"
	cp -a "$src/tree/tests/qemu-iotests" "$cache/tree.new/tests/"
	cp -a "$src/tree/python" "$cache/tree.new/"
	cp "$src/tree/VERSION" "$cache/tree.new/"
	rm -rf "$src/tree" "$cache/tree"
	mv "$cache/tree.new" "$cache/tree"
}
[ -x "$iotests/check" ] || fetch
echo "iotests: QEMU $(cat "$cache/tree/VERSION") tests in $iotests" >&2

# select FMT: the qemu-img/qemu-io-only bash tests for FMT over file.
select_tests() {
	local fmt=$1 f
	cd "$iotests"
	for f in [0-9][0-9][0-9] tests/*; do
		case $f in *.out | *.py) continue ;; esac
		[ -f "$f" ] && head -1 "$f" | grep -q bash || continue
		grep -Eq "^_supported_fmt.*\\b($fmt|generic)\\b" "$f" || continue
		grep -Eq '^_supported_proto.*\b(file|generic)\b' "$f" || continue
		# The storage daemon's own tests (qsd-jobs: $QSD with its
		# monitor on stdio) and qemu-nbd's (common.nbd, $QEMU_NBD), when
		# they need no qemu-system and no TLS.
		if grep -Eq '\$QSD |common\.nbd|\$QEMU_NBD' "$f"; then
			# check takes a test of tests/ by its name alone.
			grep -Eq 'common\.(qemu|tls)|\$QEMU_PROG|\$\{?QEMU\}? |_launch_qemu|qemu_comm_method' "$f" || echo "${f#tests/}"
			continue
		fi
		grep -Eq 'common\.(qemu|nbd|tls)|\$QEMU_NBD|_launch_qsd|\$QSD_PROG|\$QEMU_PROG|\$\{?QEMU\}? |_launch_qemu|qemu_comm_method|nbd' "$f" && continue
		echo "${f#tests/}"
	done
}

# No dot in the name: tests that build blkdebug: filenames refuse a
# TEST_DIR with characters other than letters, digits, -, _ and /.
work=$(mktemp -d /var/tmp/ringblk-iotests-run-XXXXXX)
trap 'rm -rf "$work"' EXIT
results=${IOTESTS_RESULTS:-$cache/results}
mkdir -p "$work/ringblk" "$work/qemu" "$work/test" "$work/sock" "$results"
# A private copy of the test tree (13 MB): check writes its .out.bad,
# .notrun and timing files next to the tests, so two runs at once must
# not share one tree.
cp -a "$cache/tree" "$work/tree"
iotests=$work/tree/tests/qemu-iotests

# The stub qemu-system: check runs "-machine help" once, and
# _require_drivers asks "-drive format=help", answered with the formats
# the qemu-img under test lists; nothing else may run it.
cat >"$work/qemu-system-stub" <<'EOF'
#!/bin/sh
[ "$1 $2" = "-machine help" ] && exit 0
if [ "$1 $2" = "-drive format=help" ]; then
	"$QEMU_IMG_PROG" --help | grep '^Supported formats:'
	exit 0
fi
echo "qemu-system is not used by the qemu-img/qemu-io selection" >&2
exit 1
EOF
chmod +x "$work/qemu-system-stub"

if [ "$progs" != qemu ]; then
	bin=${RINGBLK:-}
	if [ -z "$bin" ]; then
		bin=$work/ringblk/ringblk
		(cd "$repo" && go build -o "$bin" ./cmd/ringblk)
	fi
	"$bin" install-links "$work/ringblk"
fi
for t in qemu-img qemu-io qemu-nbd qemu-storage-daemon; do
	p=$(command -v "$t" || true)
	[ -n "$p" ] && ln -s "$p" "$work/qemu/$t"
done
# check wants a QSD_PROG that exists; the stub fails any real use.
[ -e "$work/qemu/qemu-storage-daemon" ] || ln -s "$work/qemu-system-stub" "$work/qemu/qemu-storage-daemon"

# run SIDE FMT: check on the selection; the log goes to results/.
run() {
	local side=$1 fmt=$2 list log
	if [ ${#tests[@]} -gt 0 ]; then
		list=("${tests[@]}")
	else
		mapfile -t list < <(select_tests "$fmt")
	fi
	log=$results/$side-$fmt.log
	rm -rf "$work/test" && mkdir -p "$work/test"
	echo "iotests: $side -$fmt: ${#list[@]} tests (log $log)" >&2
	(cd "$iotests" && TEST_DIR=$work/test SOCK_DIR=$work/sock \
		QEMU_PROG=$work/qemu-system-stub QSD_PROG=$work/$side/qemu-storage-daemon \
		QEMU_IMG_PROG=$work/$side/qemu-img QEMU_IO_PROG=$work/$side/qemu-io \
		QEMU_NBD_PROG=$work/$side/qemu-nbd \
		./check --color off -j "$jobs" "-$fmt" "${list[@]}" >"$log" 2>&1) || true
	# One line per test: "NNN  pass|fail|not run  …" (check redraws a
	# line with \r while the test runs).
	local pass fail notrun failed lines
	lines=$(tr '\r' '\n' <"$log" | grep -E '^[^ ]+ +(pass|fail|not run) +\[' || true)
	pass=$(grep -cE '^[^ ]+ +pass ' <<<"$lines" || true)
	fail=$(grep -cE '^[^ ]+ +fail ' <<<"$lines" || true)
	notrun=$(grep -cE '^[^ ]+ +not run ' <<<"$lines" || true)
	failed=$( (grep -E '^[^ ]+ +fail ' <<<"$lines" || true) | awk '{print $1}' | tr '\n' ' ')
	printf '%-8s -%-6s pass %3d  fail %3d  not run %3d  of %3d\n' "$side" "$fmt" "$pass" "$fail" "$notrun" "${#list[@]}"
	[ -z "$failed" ] || echo "  failing: $failed"
	rm -f "$iotests"/*.out.bad "$iotests"/tests/*.out.bad "$iotests"/*.notrun "$iotests"/*.casenotrun
}

sides=()
case $progs in
both) sides=(ringblk qemu) ;;
ringblk | qemu) sides=("$progs") ;;
*) echo "iotests.sh: IOTESTS_PROGS must be both, ringblk or qemu" >&2; exit 2 ;;
esac
for side in "${sides[@]}"; do
	for fmt in "${formats[@]}"; do
		run "$side" "$fmt"
	done
done
