#!/usr/bin/env bash
# Runs the BENCHMARKS.md suite: builds release binaries, starts a fresh server on loopback for each group of
# runs, and prints each run's JSON summary line. Usage: scripts/run-benchmarks.sh [runs-per-config]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
PORT=18199
export CONFAB_API_TOKEN=bench-master-token-$RANDOM$RANDOM
cargo build --release -p confab -p confab-bench >&2
DATA=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT

start_server() {
  [ -n "${SERVER:-}" ] && { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
  rm -rf "$DATA"/*
  CONFAB_LIMITS__USER_SEND_PER_SEC=1000000 CONFAB_LIMITS__USER_SEND_BURST=1000000 CONFAB_WEBSOCKET__MAX_FRAMES_PER_SEC=0 CONFAB_LOG=warn \
    ./target/release/confab serve --listen 127.0.0.1:$PORT --data-dir "$DATA" "$@" >/dev/null 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
bench() { echo "# confab-bench $*"; ./target/release/confab-bench --url http://127.0.0.1:$PORT "$@" 2>/dev/null | tail -1; }

start_server
for w in 64 16; do for m in 200 2000; do for _ in $(seq "$RUNS"); do
  bench fanout --members 1000 --messages $m --window $w
done; done; done
for r in 20 200 1000; do bench fanout --members 1000 --messages $((r * 5)) --rate $r; done
for _ in $(seq "$RUNS"); do bench send --clients 100 --duration 10s; done
# Audit on: the content rules of scripts/bench-audit.toml and one webhook endpoint (the bench's own sink).
start_server --config scripts/bench-audit.toml
for _ in $(seq "$RUNS"); do bench send --clients 100 --duration 10s --webhook-sink 127.0.0.1:18299; done
start_server
bench connections --count 19000 --server-pid "$SERVER"
