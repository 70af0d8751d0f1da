#!/usr/bin/env bash
# bench/load.sh runs the load case of docs/scaling.md at full size: three
# trustproxy processes sharing a Sentinel-managed Redis and a storage
# directory, 200 clients pulling 50 signed images (every fourth a
# two-platform index) through them for 60 s, one replica SIGKILLed and
# restarted mid-fill and the Redis master SIGKILLed half way through. It is
# cmd/trustproxy's TestLoad, which CI runs at 40 clients and 12 images. It
# writes, under $OUT (default bench/out):
#   load.md    the figures, a Markdown table
#   load.log   the test's output
# and prints the table. It fails when a pull got unverified content, a
# client did not complete, or the upstream sent more than the bound.
# notary-server and redis-server (Debian's notary and redis-server packages)
# are installed when missing.
#
#	bash bench/load.sh                           from any directory, as root or a user
#	CLIENTS=100 IMAGES=20 DURATION=30s bash bench/load.sh
#	REDIS_TIMEOUT=250ms bash bench/load.sh     the replicas' redis.timeout (default 2s)
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

missing=()
command -v notary-server >/dev/null || missing+=(notary)
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]} > 0)); then
	sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		command -v sudo >/dev/null || { echo "bench/load.sh: install Debian's ${missing[*]} as root" >&2; exit 1; }
		sudo=(sudo)
	fi
	"${sudo[@]}" apt-get update
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "${missing[@]}"
fi
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin

out=${OUT:-bench/out}
mkdir -p "$out"
out=$(readlink -f "$out")
rm -f "$out/load.md"
status=0
go test -run='^TestLoad$' -count=1 -timeout=30m -v ./cmd/trustproxy -args \
	-load.clients="${CLIENTS:-200}" -load.images="${IMAGES:-50}" -load.duration="${DURATION:-60s}" \
	-load.redis-timeout="${REDIS_TIMEOUT:-2s}" \
	-load.table="$out/load.md" >"$out/load.log" 2>&1 || status=$?
if ((status != 0)); then
	grep -E '^\s+load_test\.go|^(---|FAIL|ok)' "$out/load.log" | tail -60 >&2
	echo "bench/load.sh: failed; the whole output is in $out/load.log" >&2
	exit "$status"
fi
cat "$out/load.md"
echo
echo "bench/load.sh: figures in $out/load.md, the test's output in $out/load.log"
