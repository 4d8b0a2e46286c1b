#!/usr/bin/env bash
# Regenerate every fixture that comes from code, in order, and compare the result with the
# committed files (issue 33, part 7):
#   1. cargo run --example interop_adapters: what this crate writes from the tiny models
#      (adapters, merged exports);
#   2. scripts/make_fixtures.py: the tiny models themselves (seeded), PEFT's adapters and
#      logits, PEFT's and transformers' logits for what step 1 wrote, and (with the GGUF)
#      SmolLM2's references;
#   3. scripts/compare_fixtures.py: the working tree against git HEAD, by value.
# CI runs only `interop_adapters --check` (step 1 compared, no Python needed).
#
# Needs a Python with torch, transformers 5.24, peft 0.21 and gguf (PyPI's torch is the CUDA
# build, ~5.6 GB with its nvidia wheels; it runs on the CPU):
#   python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers==5.24.0 peft==0.21.2 gguf accelerate
#   PYTHON=/tmp/venv/bin/python bash scripts/regenerate-fixtures.sh
# Run from a clean checkout: step 4 reports every fixture file that changed in value.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import torch, transformers, peft" 2>/dev/null || {
    echo "error: $PYTHON cannot import torch, transformers and peft (see the comment at the top of $0)" >&2
    exit 2
}
CACHE="${LORA_FROM_SCRATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lora-from-scratch}"
GGUF="$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$GGUF" ] || bash scripts/fetch-smollm2.sh

cargo run --locked --example interop_adapters
# PEFT writes target_modules (a set) in hash order: one seed, one order.
PYTHONHASHSEED=0 "$PYTHON" scripts/make_fixtures.py --gguf "$GGUF"
"$PYTHON" scripts/compare_fixtures.py
