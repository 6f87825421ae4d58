#!/usr/bin/env bash
# Alternates the peer_fanout bench against a cellport-gateway and against the Socket.IO +
# Redis adapter peer (the same clients and publisher drive both), ROUNDS rounds each (3 by
# default), then prints the medians. Each run starts its own private redis-server on a free port;
# the shared Redis on 6379 is never used.
#
#   crates/cellport-gateway/benches/peers/compare_fanout.sh [ROUNDS] [-- ARGS...]
#
# ARGS go to both runs (`--users 100 --conns-per-user 10 --rate 1000 --seconds 5 --burst 20000`).
# The JSON lines are kept in $CELLPORT_BENCH_OUT (a temp file by default).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
rounds=${1:-3}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
out=${CELLPORT_BENCH_OUT:-$(mktemp -t peer-fanout.XXXXXX.jsonl)}

[ -d "$here/socketio/node_modules" ] || (cd "$here/socketio" && npm ci --no-audit --no-fund)
# Built once and run directly: every round measures the same binary, and no round waits on
# cargo's lock while other builds run. CELLPORT_BENCH_BIN names an executable built before.
bench=${CELLPORT_BENCH_BIN:-}
[ -n "$bench" ] || bench=$(cd "$root" && cargo bench -p cellport-gateway --bench peer_fanout --no-run --message-format=json |
    node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{for(const l of s.split('\\n')){try{const m=JSON.parse(l);if(m.executable&&m.target.name==='peer_fanout')console.log(m.executable)}catch{}}})")
[ -x "$bench" ] || { echo "no peer_fanout executable" >&2; exit 1; }

for round in $(seq 1 "$rounds"); do
    for server in cellport socketio; do
        echo "== round $round of $rounds: $server" >&2
        (cd "$root" && "$bench" --bench --server "$server" "$@") | tee -a /dev/stderr | tail -n 1 >>"$out"
    done
done

node "$root/crates/cellport-store/benches/peers/medians.mjs" "$out"
echo "JSON lines: $out" >&2
