#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of Confab's parsers of untrusted bytes: the targets under
# fuzz/. Builds every target, then runs each for SECONDS (default 30) seeded with its committed corpus,
# copied to a scratch directory so the repository is never changed. Fails on any crash, hang (-timeout) or
# memory blow-up, and prints the input that caused it.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Environment: FUZZ_WORK (scratch dir, kept: grown corpora and artifacts), FUZZ_TARGET_DIR (build dir),
# FUZZ_TIMEOUT (seconds one input may take, default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-30}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer, sancov passes); the stable toolchain accepts them with
# RUSTC_BOOTSTRAP. No sanitizer: the targets and their code are safe Rust, a sanitizer halves the
# executions per CPU second, and the fixture's long-lived runtime would read as leaks to LeakSanitizer.
# Debug assertions and overflow checks stay on (cargo-fuzz's default).
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
tools=${FUZZ_TOOLS:-$root/target/fuzz-tools}
if ! command -v cargo-fuzz >/dev/null && [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "installing cargo-fuzz into $tools"
    CARGO_TARGET_DIR="$tools/build" cargo install --locked --quiet cargo-fuzz --version 0.13.2 --root "$tools"
fi
export PATH="$tools/bin:$PATH"
target_dir=${FUZZ_TARGET_DIR:-$root/target/fuzz}
triple=$(rustc -vV | sed -n 's/^host: //p')

# The fuzz crate's lock file must match the workspace it fuzzes (cargo fuzz build has no --locked).
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null \
    || { echo "fuzz/Cargo.lock is out of date: run cargo update -w --manifest-path fuzz/Cargo.toml"; exit 1; }

start=$(date +%s)
if [ $# -gt 0 ]; then
    for t in "${targets[@]}"; do (cd fuzz && cargo fuzz build --sanitizer none --target-dir "$target_dir" "$t"); done
else
    (cd fuzz && cargo fuzz build --sanitizer none --target-dir "$target_dir")
fi
echo "fuzz build: $(( $(date +%s) - start )) s"

work=${FUZZ_WORK:-$(mktemp -d)}
mkdir -p "$work"
failed=()
printf '%-22s %10s %8s %8s %8s %9s\n' target execs exec/s cov corpus cpu_s
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    artifacts="$work/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
    log="$work/$t.log"
    status=0
    TIMEFORMAT='%U %S'
    { time "$target_dir/$triple/release/$t" "$corpus" \
        -max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 -max_len=8192 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; } 2>"$work/$t.time" || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    files=$(find "$corpus" -type f | wc -l)
    cpu=$(awk '{printf "%.1f", $1+$2}' "$work/$t.time" 2>/dev/null || echo "?")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    printf '%-22s %10s %8s %8s %8s %9s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$files" "$cpu"
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        echo "!! $t failed (exit $status); log: $log"
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -20 || true
        for a in "$artifacts"/*; do
            [ -f "$a" ] || continue
            echo "   input: $a"
            echo "   base64: $(base64 -w0 "$a" | head -c 2000)"
        done
    fi
done
echo "scratch (grown corpora, logs, artifacts): $work"
echo "total: $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found failures in: ${failed[*]}"
    exit 1
fi
