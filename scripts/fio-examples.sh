#!/usr/bin/env bash
# Runs fio's own example job files with ioengine=io_uring (fio) and with
# ioengine=ringblk (ringblk bench), in a scratch directory, with small sizes
# and short runtimes. Every example fio runs must run with ringblk too (no
# refusal), and each JSON report must have exactly fio's key set.
#
#   scripts/fio-examples.sh [RINGBLK_BINARY] [EXAMPLE_NAME ...]
#
# Environment: EXAMPLES (default /usr/share/doc/fio/examples), WORK (a
# scratch directory; default a new one under /var/tmp: some examples use
# direct=1, and tmpfs pages would be memory),
# KEEP=1 keeps it, SIZE (default 16m), RUNTIME (default 1).
set -u
bin=${1:-bin/ringblk}
case "$bin" in /*) ;; *) bin="$(pwd)/$bin" ;; esac
shift || true
examples=${EXAMPLES:-/usr/share/doc/fio/examples}
size=${SIZE:-16m}
runtime=${RUNTIME:-1}
command -v fio >/dev/null || { echo "fio-examples: fio is not installed (scripts/deps.sh)"; exit 1; }
[ -d "$examples" ] || { echo "fio-examples: $examples is missing (apt-get install fio-examples)"; exit 1; }
[ -x "$bin" ] || { echo "fio-examples: $bin is not built (make build)"; exit 1; }
work=${WORK:-$(mktemp -d /var/tmp/fio-examples.XXXXXX)}
mkdir -p "$work"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work/.bin"
jsonkeys="$work/.bin/jsonkeys"
( cd "$here" && go build -o "$jsonkeys" scripts/fio-jsonkeys.go ) || exit 1

# rewrite FILE ENGINE DIR: the example with every ioengine set to ENGINE,
# its files moved into DIR (an absolute file name becomes a name in DIR), sizes capped at $size and runtimes at
# $runtime seconds.
rewrite() {
	awk -v eng="$2" -v dir="$3" -v size="$size" -v rt="$runtime" '
	# bytes of a size such as 4k or 16m (base 1024), -1 when not a plain size
	function bytes(v,   n, u) {
		if (v !~ /^[0-9]+[kKmMgGtT]?[iI]?[bB]?$/) return -1
		n = v + 0; u = tolower(substr(v, length(n "") + 1, 1))
		return n * (u == "k" ? 1024 : u == "m" ? 1048576 : u == "g" ? 1073741824 : u == "t" ? 1099511627776 : 1)
	}
	# capped at $size; a percentage, a range or a smaller size stays as it is
	function cap(v,   b) { if (v ~ /%/ || v ~ /^[0-9]+[kKmMgG]?-[0-9]+[kKmMgG]?$/) return v; b = bytes(v); return (b >= 0 && b <= bytes(size)) ? v : size }
	function files(v,   n, parts, i, out, p) {
		gsub(/\\:/, "\001", v) # an escaped colon is part of a name
		n = split(v, parts, ":")
		out = ""
		for (i = 1; i <= n; i++) {
			p = parts[i]
			if (p ~ /^\//) { p = substr(p, 2); gsub(/\//, "_", p) }
			gsub(/\001/, "\\:", p)
			out = out (i > 1 ? ":" : "") p
		}
		return out
	}
	BEGIN { print "[global]"; print "ioengine=" eng; print "directory=" dir; print "size=" size; print "runtime=" rt * 2 }
	{
		line = $0
		key = line; sub(/[ \t]*=.*/, "", key); sub(/^[ \t]+/, "", key)
		val = line; if (!sub(/^[^=]*=[ \t]*/, "", val)) val = ""
		if (line !~ /=/) key = ""
		if (key == "ioengine") line = "ioengine=" eng
		else if (key == "directory") line = "directory=" dir
		else if (key == "filename") line = "filename=" files(val)
		else if (key == "size" || key == "io_size" || key == "io_limit" || key == "filesize" || key == "offset" || key == "offset_increment") line = key "=" cap(val)
		else if (key == "runtime" || key == "timeout" || key == "ramp_time") line = key "=" rt
		else if (key == "startdelay") line = "startdelay=0"
		print line
	}' "$1"
}

# No file an example writes may grow past 1 GiB (an example sized for a
# real device must not fill the disk).
ulimit -f $((1 << 20))
runs=0 refused=0 skipped=0 keydiff=0 failed=0
list=()
if [ $# -gt 0 ]; then
	for n in "$@"; do list+=("$examples/${n%.fio}.fio"); done
else
	for f in "$examples"/*.fio "$examples"/*.fio.gz; do [ -e "$f" ] && list+=("$f"); done
fi
for f in "${list[@]}"; do
	name=$(basename "$f"); name=${name%.gz}; name=${name%.fio}
	src="$work/$name.orig"
	case "$f" in *.gz) gzip -dc "$f" >"$src" ;; *) cp "$f" "$src" ;; esac
	for eng in io_uring ringblk; do
		d="$work/$name.$eng"
		rm -rf "$d"; mkdir -p "$d"
		rewrite "$src" "$eng" "$d" >"$d/job.fio"
	done
	d="$work/$name.io_uring"
	if ! (cd "$d" && timeout 120 fio --output-format=json --output=out.json job.fio >stdout 2>stderr) ||
		! grep -q '"jobs"' "$d/out.json" 2>/dev/null; then
		skipped=$((skipped + 1))
		printf '%-32s fio refuses or fails: %s\n' "$name" "$(grep -v '^$' "$d/stderr" | head -1)"
		continue
	fi
	r="$work/$name.ringblk"
	(cd "$r" && timeout 120 "$bin" bench --output-format=json --output=out.json job.fio >stdout 2>stderr)
	rc=$?
	if grep -q 'not implement\|unknown option\|unknown ioengine\|not supported' "$r/stderr"; then
		refused=$((refused + 1))
		printf '%-32s REFUSED: %s\n' "$name" "$(head -1 "$r/stderr")"
		continue
	fi
	if [ $rc -ne 0 ] || ! grep -q '"jobs"' "$r/out.json" 2>/dev/null; then
		failed=$((failed + 1))
		printf '%-32s FAILED (exit %d): %s\n' "$name" "$rc" "$(head -1 "$r/stderr")"
		continue
	fi
	runs=$((runs + 1))
	if ! "$jsonkeys" "$d/out.json" "$r/out.json" >"$r/keys.diff"; then
		keydiff=$((keydiff + 1))
		printf '%-32s runs; JSON keys differ (%d): %s\n' "$name" "$(wc -l <"$r/keys.diff")" "$(head -3 "$r/keys.diff" | tr '\n' ' ')"
	else
		printf '%-32s runs; JSON keys match\n' "$name"
	fi
done
echo "fio-examples: fio ran $((runs + refused + failed)) of ${#list[@]}; ringblk ran $runs, refused $refused, failed $failed; JSON key sets differ in $keydiff"
[ "${KEEP:-0}" = 1 ] && echo "fio-examples: kept $work"
[ $refused -eq 0 ] && [ $failed -eq 0 ] && [ $keydiff -eq 0 ]
