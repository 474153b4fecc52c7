#!/usr/bin/env bash
# Fails when a crate (the workspace's crates/*, and fuzz/) declares a dependency its code never names.
# cargo-machete reads each Cargo.toml and searches the crate's sources for the names: it compiles nothing
# (about a second) and so can be fooled. A dependency that must stay although its sources never name it
# (a crate needed only to turn on a feature, say) goes in that crate's Cargo.toml with the reason:
#   [package.metadata.cargo-machete]
#   ignored = ["name"]  # why it stays
# Installs the pinned cargo-machete into target/tools when it is absent (needs crates.io once).
# Environment: UNUSED_DEPS_TOOLS (where to install, default target/tools).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.9.2
tools=${UNUSED_DEPS_TOOLS:-$PWD/target/tools}
machete=$tools/bin/cargo-machete
if [ "$("$machete" --version 2>/dev/null)" != "$version" ]; then
    echo "installing cargo-machete $version into $tools"
    CARGO_TARGET_DIR="$tools/build" cargo install --locked --quiet cargo-machete --version "$version" --root "$tools"
fi
status=0
"$machete" --skip-target-dir || status=$?
if [ "$status" = 1 ]; then
    echo "unused dependencies (above): remove them, or list them as ignored with the reason (see scripts/unused-deps.sh)"
fi
exit "$status"
