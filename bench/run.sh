#!/bin/sh
# run.sh runs the trustproxy vs distribution benchmarks and summarizes them
# with benchstat, one column per implementation, distribution as the base.
#   COUNT=6 BENCH=. BENCHTIME=1s bench/run.sh
# Raw results go to $OUT (a temp file unless set).
set -eu
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -t trustproxy-bench.XXXXXX)}
go test -run='^$' -bench="${BENCH:-.}" -benchtime="${BENCHTIME:-1s}" -count="${COUNT:-6}" ./bench | tee "$out"
echo
if ! go run golang.org/x/perf/cmd/benchstat@latest -col '/impl@(distribution trustproxy upstream)' "$out"; then
	echo "benchstat is not reachable; raw results are in $out" >&2
fi
echo "raw results: $out"
