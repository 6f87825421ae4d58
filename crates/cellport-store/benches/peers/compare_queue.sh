#!/usr/bin/env bash
# Alternates Cellport's peer_queue bench and the BullMQ peer in the same shape, ROUNDS rounds each
# (3 by default), then prints the medians. Every run gets a private redis-server without
# persistence on a free port; the shared Redis on 6379 is never used.
#
#   crates/cellport-store/benches/peers/compare_queue.sh [ROUNDS] [-- ARGS...]
#
# ARGS go to both benches (`--scenarios bulk`, `--bulk-jobs 5000`, ...; the BullMQ peer ignores
# `--mode` and `--aof`, so leave `--aof` out of a comparison: its Redis has no persistence).
# The JSON lines are kept in $CELLPORT_BENCH_OUT (a temp file by default).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
rounds=${1:-3}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
out=${CELLPORT_BENCH_OUT:-$(mktemp -t peer-queue.XXXXXX.jsonl)}

[ -d "$here/bullmq/node_modules" ] || (cd "$here/bullmq" && npm ci --no-audit --no-fund)
# Built once and run directly: every round measures the same binary, and no round waits on
# cargo's lock while other builds run. CELLPORT_BENCH_BIN names an executable built before.
bench=${CELLPORT_BENCH_BIN:-}
[ -n "$bench" ] || bench=$(cd "$root" && cargo bench -p cellport-store --bench peer_queue --no-run --message-format=json |
    node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{for(const l of s.split('\\n')){try{const m=JSON.parse(l);if(m.executable&&m.target.name==='peer_queue')console.log(m.executable)}catch{}}})")
[ -x "$bench" ] || { echo "no peer_queue executable" >&2; exit 1; }

free_port() {
    node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"
}

for round in $(seq 1 "$rounds"); do
    echo "== round $round of $rounds: cellport" >&2
    (cd "$root" && "$bench" --bench "$@") | tee -a /dev/stderr | tail -n 1 >>"$out"

    echo "== round $round of $rounds: bullmq" >&2
    port=$(free_port)
    dir=$(mktemp -d)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/log" 2>&1 &
    redis_pid=$!
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
    node "$here/bullmq/bench.mjs" --port "$port" "$@" | tee -a /dev/stderr | tail -n 1 >>"$out"
    kill "$redis_pid"
    wait "$redis_pid" || true
    rm -rf "$dir"
done

node "$here/medians.mjs" "$out"
echo "JSON lines: $out" >&2
