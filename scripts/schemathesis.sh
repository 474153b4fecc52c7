#!/usr/bin/env bash
# Schemathesis against a live server: every operation of /api/v1/openapi.json with every check, its stateful
# phase following the document's links, authenticated with the master token and then with a user's session
# token. Fails when schemathesis reports a failure or the server logged a panic.
#
#   scripts/schemathesis.sh                           # CI size: 10 examples per operation, seed 16
#   SCHEMATHESIS_EXAMPLES=100 scripts/schemathesis.sh # by hand, larger
#
# Needs the debug binary (built if missing) and python3 with venv.
set -euo pipefail
cd "$(dirname "$0")/.."

examples=${SCHEMATHESIS_EXAMPLES:-10}
seed=${SCHEMATHESIS_SEED:-16}
report=${SCHEMATHESIS_REPORT:-target/schemathesis-report}
target_dir=${CARGO_TARGET_DIR:-target}

venv=target/schemathesis-venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "4.32.5"; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" && [ "$(id -u)" = 0 ]; then
        { apt-get install -y -qq python3-venv || { apt-get update -qq && apt-get install -y -qq python3-venv; }; } >/dev/null
        rm -rf "$venv" && python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet "schemathesis==4.32.5"
fi

bin="$target_dir/debug/confab"
[ -x "$bin" ] || cargo build -p confab --locked

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
data=$(mktemp -d)
master="schemathesis-master-token-0123456789"
# Rates raised so generated calls reach the handlers instead of mostly answering 429 (the 429 paths have
# their own tests); every other limit stays at its default.
CONFAB_API_TOKEN="$master" CONFAB_BUILTIN__ENABLED=false CONFAB_LOG=warn \
    CONFAB_LIMITS__USER_SEND_PER_SEC=100000 CONFAB_LIMITS__USER_SEND_BURST=100000 \
    CONFAB_LIMITS__USER_READS_PER_SEC=100000 CONFAB_LIMITS__USER_READS_BURST=100000 \
    CONFAB_UPLOADS__USER_PER_MINUTE=100000 \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$data/server.log" 2>&1 &
pid=$!
stop() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$data"
}
trap stop EXIT

for _ in $(seq 1 200); do
    curl -fsS "$base/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$data/server.log"; echo "the server did not start"; exit 1; }
    sleep 0.1
done

call() { # method path [json]
    curl -sS --fail-with-body -X "$1" "$base$2" -H "Authorization: Bearer $master" -H 'Content-Type: application/json' \
        ${3:+--data "$3"}
}
# A little data, so operations on existing objects have something to act on.
call POST /api/v1/users '{"id": "alice"}' >/dev/null
call POST /api/v1/users '{"id": "bob"}' >/dev/null
call POST /api/v1/channels '{"kind": "group", "id": "general", "user_ids": ["alice", "bob"]}' >/dev/null
call POST /api/v1/channels/general/messages '{"sender_id": "alice", "text": "hello"}' >/dev/null
call POST /api/v1/bots '{"id": "helper", "settings": {"callback_url": "https://example.com/confab-bot"}}' >/dev/null
call POST /api/v1/channels/general/members '{"user_ids": ["helper"]}' >/dev/null
session=$(call POST /api/v1/users/alice/sessions | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

mkdir -p "$report"
status=0
run() { # name seed token [schemathesis filter options...]; $phases overrides the phases
    local name=$1 run_seed=$2 token=$3
    shift 3
    echo "== schemathesis as $name: $examples examples per operation, seed $run_seed"
    # scripts/schemathesis.toml: the few operations where one check cannot apply as-is, and why. Every check
    # is on by default; naming them (`--checks all`) would outrank the file's per-operation exemptions.
    "$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/api/v1/openapi.json" \
        --max-examples "$examples" --seed "$run_seed" --workers 2 "$@" \
        --phases "${phases:-examples,coverage,fuzzing,stateful}" \
        --header "Authorization: Bearer $token" \
        --request-timeout 30 --suppress-health-check all --no-color \
        --report junit --report-junit-path "$report/$name.xml" || status=1
}
# The session runs first: the master run deletes users and revokes sessions, the seeded ones included. A
# user may revoke its own sessions, which would leave the rest of the session run with a dead token (and
# most operations answering only 401), so revocation runs alone, after everything else the token can do.
run session "$seed" "$session" --exclude-operation-id revoke_sessions
phases=examples,coverage,fuzzing run session-revoke "$seed" "$session" --include-operation-id revoke_sessions
run master "$seed" "$master"

if grep -q "panicked" "$data/server.log"; then
    grep -B2 -A5 "panicked" "$data/server.log" | head -40
    echo "the server panicked"
    status=1
fi
exit $status
