#!/usr/bin/env bash
# BENCHMARKS.md "Backups under load": fills a release server with 30 s of acked sends, then runs `confab backup`
# during a second 10 s send run (and one run without), and restores the result. Usage: scripts/bench-backup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p confab -p confab-bench >&2
PORT=18231
export CONFAB_API_TOKEN=bench-master-token-$RANDOM$RANDOM
DATA=$(mktemp -d); OUT=$(mktemp -d)
CONFAB_LIMITS__USER_SEND_PER_SEC=1000000 CONFAB_LIMITS__USER_SEND_BURST=1000000 CONFAB_WEBSOCKET__MAX_FRAMES_PER_SEC=0 CONFAB_LOG=warn CONFAB_BUILTIN__ENABLED=false \
  ./target/release/confab serve --listen 127.0.0.1:$PORT --data-dir "$DATA/d" >/dev/null 2>&1 &
S=$!
trap 'kill $S 2>/dev/null; rm -rf "$DATA" "$OUT"' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
B="./target/release/confab-bench --url http://127.0.0.1:$PORT"
$B send --clients 100 --duration 30s 2>/dev/null | tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin); print('fill', {k:d[k] for k in d if 'per_s' in k or k in ('acked','sent')})"
ls -la "$DATA/d/" | grep confab.db
echo "-- send alone"
$B send --clients 100 --duration 10s 2>/dev/null | tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin); print({k:d[k] for k in d if 'per_s' in k or 'p99' in k or 'p50' in k})"
echo "-- send with a backup during it"
( $B send --clients 100 --duration 10s 2>/dev/null | tail -1 | python3 -c "import json,sys; d=json.load(sys.stdin); print({k:d[k] for k in d if 'per_s' in k or 'p99' in k or 'p50' in k})" ) &
P=$!
sleep 2
/usr/bin/time -f "backup wall %e s, max RSS %M KB" ./target/release/confab backup --to "$OUT/b.tar.gz" --data-dir "$DATA/d"
wait $P
ls -la "$OUT/b.tar.gz"
/usr/bin/time -f "restore wall %e s" ./target/release/confab restore --from "$OUT/b.tar.gz" --data-dir "$OUT/r"
