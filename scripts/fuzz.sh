#!/usr/bin/env bash
# Runs Go fuzz targets: every one found (or only $1) for $2 each.
set -euo pipefail
only=${1:-}
time=${2:-30s}
found=0
while IFS= read -r line; do
	dir=${line%%:*}
	name=${line##*func }
	name=${name%%(*}
	if [ -n "$only" ] && [ "$name" != "$only" ]; then continue; fi
	found=1
	echo "== fuzz $name in $dir for $time"
	go test -run '^$' -fuzz "^${name}\$" -fuzztime "$time" "./$dir"
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(' . | sed -E 's#^\./##; s#/[^/]+_test\.go:[0-9]+:#:#')
if [ "$found" -eq 0 ]; then
	echo "fuzz: no fuzz target${only:+ named $only}" >&2
	exit 1
fi
