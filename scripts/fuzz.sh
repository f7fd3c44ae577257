#!/usr/bin/env bash
# Runs Go fuzz targets: every one found (or only $1) for $2 each: a
# duration (30s) or a count of executions (200x). make test uses a count:
# a duration can end while a worker is mid-input, which Go reports as a
# failure ("context deadline exceeded").
set -euo pipefail
only=${1:-}
time=${2:-30s}
# How long the fuzzer may spend shrinking each new interesting input
# (Go's default is 60s, which makes short runs unpredictable).
mintime=${FUZZMINTIME:-10s}
found=0
while IFS= read -r line; do
	dir=${line%%:*}
	name=${line##*func }
	name=${name%%(*}
	if [ -n "$only" ] && [ "$name" != "$only" ]; then continue; fi
	found=1
	echo "== fuzz $name in $dir for $time"
	go test -run '^$' -fuzz "^${name}\$" -fuzztime "$time" -fuzzminimizetime "$mintime" "./$dir"
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]+\(' . | sed -E 's#^\./##; s#/[^/]+_test\.go:[0-9]+:#:#')
if [ "$found" -eq 0 ]; then
	echo "fuzz: no fuzz target${only:+ named $only}" >&2
	exit 1
fi
