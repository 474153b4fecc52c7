#!/usr/bin/env bash
# Soak: starts the server with a fresh data dir and the configuration `confab-bench soak` needs, runs the soak
# against it, and stops the server. Fails when the soak fails (any error, RSS drift or descriptor growth
# beyond the bounds; see `confab-bench soak --help`).
#
#   scripts/soak.sh [DURATION]            # default 3m; DURATION as 90s, 30m, 4h
#   SOAK_SAMPLE_EVERY=60s SOAK_PROFILE=release scripts/soak.sh 30m
#
# Binaries: $CARGO_TARGET_DIR (or target)/$SOAK_PROFILE (debug by default, which `cargo test --workspace`
# builds) /confab and /confab-bench. The last line of stdout is the soak's JSON summary, also kept in
# $SOAK_OUT (default target/soak/soak-<time>.json). Extra arguments after DURATION go to `confab-bench soak`.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-3m}
shift || true
profile=${SOAK_PROFILE:-debug}
bin_dir=${CARGO_TARGET_DIR:-target}/$profile
port=${SOAK_PORT:-18381}
provider=${SOAK_PROVIDER_LISTEN:-127.0.0.1:18399}
sample_every=${SOAK_SAMPLE_EVERY:-60s}
for b in confab confab-bench; do
    [ -x "$bin_dir/$b" ] || { echo "soak: $bin_dir/$b is missing (build it: cargo build [--release] -p confab -p confab-bench)" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/confab-soak.XXXXXX")
out=${SOAK_OUT:-target/soak/soak-$(date -u +%Y%m%dT%H%M%SZ).json}
mkdir -p "$(dirname "$out")"
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

token="soak-master-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
"$bin_dir/confab-bench" soak --provider-listen "$provider" --print-config > "$work/soak.toml"
mkdir -p "$work/data"
CONFAB_API_TOKEN="$token" CONFAB_BUILTIN__ENABLED=false CONFAB_LOG=${CONFAB_LOG:-warn} \
    "$bin_dir/confab" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --config "$work/soak.toml" \
    > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { echo "soak: the server exited:" >&2; cat "$work/server.log" >&2; exit 1; }
    sleep 0.2
done
echo "soak: server pid $server_pid on 127.0.0.1:$port ($profile), $duration, a sample every $sample_every" >&2

status=0
CONFAB_API_TOKEN="$token" "$bin_dir/confab-bench" --url "http://127.0.0.1:$port" soak \
    --duration "$duration" --sample-every "$sample_every" --server-pid "$server_pid" --data-dir "$work/data" \
    --provider-listen "$provider" "$@" | tee "$out" || status=$?
if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "soak: the server died during the soak:" >&2
    tail -n 50 "$work/server.log" >&2
    status=1
fi
if [ "$status" != 0 ]; then
    echo "soak: FAILED (summary in $out); the server's last log lines:" >&2
    tail -n 20 "$work/server.log" >&2
fi
exit "$status"
