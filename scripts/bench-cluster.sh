#!/usr/bin/env bash
# The scale-out figures of BENCHMARKS.md: 1, 2 and 3 release nodes on loopback sharing one PostgreSQL schema
# (fresh for each cluster) and one NATS subject prefix, driven by confab-bench: acknowledged sends/s with
# the clients spread over the nodes, fan-out deliveries/s with the members spread over the nodes, and
# cross-node send-to-deliver latency (publisher on the first node, every member on the second).
# Needs PostgreSQL and NATS as scripts/services.sh leaves them. Usage: scripts/bench-cluster.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
BASE_PORT=18181
PG=${CONFAB_BENCH_POSTGRES_URL:-postgres://root@127.0.0.1:5432/test}
NATS=${CONFAB_BENCH_NATS_URL:-nats://127.0.0.1:4222}
export CONFAB_API_TOKEN=bench-master-token-$RANDOM$RANDOM
cargo build --release -p confab -p confab-bench >&2
WORK=$(mktemp -d)
PIDS=()
SCHEMA=""
stop_cluster() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
  [ -n "$SCHEMA" ] && psql -q "$PG" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null
  SCHEMA=""
}
trap 'stop_cluster; rm -rf "$WORK"' EXIT

# start_cluster N: N nodes on BASE_PORT.. over a fresh schema and subject prefix.
start_cluster() {
  stop_cluster
  SCHEMA=bench_$RANDOM$RANDOM
  psql -q "$PG" -c "CREATE SCHEMA $SCHEMA" >/dev/null
  local prefix=confab-bench-$RANDOM$RANDOM
  for i in $(seq 0 $(($1 - 1))); do
    rm -rf "$WORK/node$i"; mkdir -p "$WORK/node$i"
    CONFAB_STORAGE__BACKEND=postgres \
    CONFAB_STORAGE__POSTGRES_URL="$PG?options=-c%20search_path%3D$SCHEMA" \
    CONFAB_BUS__BACKEND=nats CONFAB_BUS__NATS_URL="$NATS" CONFAB_BUS__SUBJECT_PREFIX="$prefix" \
    CONFAB_BUILTIN__ENABLED=false CONFAB_LOG=warn \
    CONFAB_LIMITS__USER_SEND_PER_SEC=1000000 CONFAB_LIMITS__USER_SEND_BURST=1000000 \
    CONFAB_WEBSOCKET__MAX_FRAMES_PER_SEC=0 \
      ./target/release/confab serve --listen 127.0.0.1:$((BASE_PORT + i)) --data-dir "$WORK/node$i" \
      >/dev/null 2>&1 &
    PIDS+=($!)
    # One at a time: the first applies the schema.
    for _ in $(seq 300); do curl -sf http://127.0.0.1:$((BASE_PORT + i))/readyz >/dev/null && break; sleep 0.1; done
    curl -sf http://127.0.0.1:$((BASE_PORT + i))/readyz >/dev/null || { echo "node $i did not start" >&2; exit 1; }
  done
}
url() { echo "http://127.0.0.1:$((BASE_PORT + $1))"; }
nodes() { local n=$1 out=""; for i in $(seq 0 $((n - 1))); do out="$out${out:+,}$(url "$i")"; done; echo "$out"; }
# CPU seconds (user + system) used so far by each kind of process: the nodes, PostgreSQL, nats-server.
cpu() {
  local hz; hz=$(getconf CLK_TCK)
  for kind in confab postgres nats-server; do
    local ticks=0
    for p in $(pgrep -x "$kind" || true); do
      ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    printf '%s=%s ' "$kind" "$(echo "scale=2; $ticks / $hz" | bc)"
  done
}
# Each run's summary line, then the CPU seconds each kind of process used during it (the generator is the
# rest of the run's wall time on two cores).
bench() {
  echo "# confab-bench $*"
  local before; before=$(cpu)
  ./target/release/confab-bench "$@" 2>/dev/null | tail -1
  echo "# cpu before: $before"
  echo "# cpu after:  $(cpu)"
}

# NATS messages each node has published and received from the others so far (a node takes only the
# channels its sessions are in: in `send`, each client's group has its one member on one node).
received() {
  local out=""
  for i in $(seq 0 $(($1 - 1))); do
    out="$out node$i=$(curl -sf -H "Authorization: Bearer $CONFAB_API_TOKEN" "$(url "$i")/metrics" |
      awk '/^confab_bus_nats_(published|received)_total/ {sub(/^confab_bus_nats_/, "", $1); sub(/_total$/, "", $1); printf "%s%s=%s", sep, $1, $2; sep = ","}')"
  done
  echo "# nats messages:$out"
}

for n in 1 2 3; do
  start_cluster "$n"
  for _ in $(seq "$RUNS"); do
    bench --url "$(url 0)" --nodes "$(nodes "$n")" send --clients 100 --duration 10s
  done
  received "$n"
  for _ in $(seq "$RUNS"); do
    bench --url "$(url 0)" --nodes "$(nodes "$n")" fanout --members 1000 --messages 2000 --window 64
  done
  # Send-to-deliver latency: with one node, every delivery is local; with more, every one crosses nodes.
  other=$(( n > 1 ? 1 : 0 ))
  for r in 200 1000; do
    bench --url "$(url 0)" --nodes "$(url "$other")" fanout --members 100 --messages $((r * 5)) --rate "$r"
  done
done
stop_cluster
