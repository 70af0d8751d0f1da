#!/usr/bin/env bash
# bench/run.sh measures every row of docs/performance.md side by side in one
# run: a verified pull straight from the upstream (direct), through
# distribution's pull-through proxy, and through trustproxy, with images
# signed on the real notary-server. It writes, under $OUT (default bench/out):
#   table.md        the table of medians and ratios, targets, raw samples
#   log             the test's output
#   prof/*.pprof    trustproxy's CPU and block profiles of the cold rows
# It takes about 8 minutes on a 2-core machine and removes everything else it
# made. notary-server (Debian's notary package) is installed when missing.
#
#	bash bench/run.sh                 from any directory, as root or a user
#	ROWS=cold-big,cold-small bash bench/run.sh
#	BEFORE=/path/to/older/trustproxy bash bench/run.sh    adds a before/after table
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

if ! command -v notary-server >/dev/null; then
	sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		command -v sudo >/dev/null || { echo "bench/run.sh: notary-server is missing; install Debian's notary package as root" >&2; exit 1; }
		sudo=(sudo)
	fi
	"${sudo[@]}" apt-get update
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y notary
fi
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin

out=${OUT:-bench/out}
mkdir -p "$out"
out=$(readlink -f "$out")
rm -rf "$out/prof"
args=(-table="$out/table.md" -profile="$out/prof")
[[ -n ${ROWS:-} ]] && args+=(-rows="$ROWS")
[[ -n ${BEFORE:-} ]] && args+=(-before="$(readlink -f "$BEFORE")")
status=0
go test -run='^TestTable$' -count=1 -timeout=20m -v ./bench -args "${args[@]}" >"$out/log" 2>&1 || status=$?
if ((status != 0)); then
	grep -v '^ *notary\|publish docker' "$out/log" | tail -40 >&2
	echo "bench/run.sh: failed; the whole output is in $out/log" >&2
	exit "$status"
fi
cat "$out/table.md"
echo
echo "bench/run.sh: table in $out/table.md, profiles in $out/prof (go tool pprof -top $out/prof/cold-big.cpu.pprof)"
