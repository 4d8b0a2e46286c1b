#!/usr/bin/env bash
# This crate and PyTorch + PEFT side by side, in one sitting, on this host: SmolLM2-135M-Instruct,
# batch x seq 8 x 128, LoRA r8 on q_proj,v_proj and on every linear layer, and full fine-tuning,
# in f32 and with a bf16 base. Each configuration runs ours, then PEFT's, alternating, so that a
# change in the machine's speed during the sitting hits both. Prints a markdown table (tokens/s,
# peak memory, the ratios) and the host (CPU, threads, measured matmul GFLOP/s, roofline
# fraction), and keeps every JSON line in $OUT (default bench-vs-peft.jsonl).
#
#   PEFT_PYTHON=$WORK/venv/bin/python PEFT_MODEL_DIR=$WORK/smollm2-135m-hf bash scripts/bench-vs-peft.sh
#
# PEFT_PYTHON and PEFT_MODEL_DIR come from the setup in ../shared/bench/README.md (PyPI only:
# torch, transformers, peft; the model folder converted from the PyPI GGUF). PEFT_SCRIPT
# points at peft_baseline.py (default ../shared/bench/peft_baseline.py). Run it on an idle
# machine: a build beside it halves both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PEFT_PYTHON:?set PEFT_PYTHON to the python of a venv with torch, transformers and peft}"
: "${PEFT_MODEL_DIR:?set PEFT_MODEL_DIR to the SmolLM2 folder made by convert_smollm2_gguf.py}"
PEFT_SCRIPT=${PEFT_SCRIPT:-../shared/bench/peft_baseline.py}
OUT=${OUT:-bench-vs-peft.jsonl}
CONFIGS=${CONFIGS:-"qv:f32 qv:bf16 all:f32 all:bf16 full:f32"}
[ -f "$PEFT_SCRIPT" ] || { echo "no $PEFT_SCRIPT: set PEFT_SCRIPT" >&2; exit 2; }
cargo build --release --quiet --example bench_smollm2
: > "$OUT"
for config in $CONFIGS; do
    targets=${config%%:*} dtype=${config##*:}
    ours=() peft=()
    case $targets in
        qv) ours+=(--targets q_proj,v_proj); peft+=(--targets qv) ;;
        all) ours+=(--targets all-linear); peft+=(--targets all) ;;
        full) ours+=(--full-ft); peft+=(--full-ft) ;;
        *) echo "unknown configuration $config" >&2; exit 2 ;;
    esac
    if [ "$dtype" = bf16 ]; then ours+=(--bf16); peft+=(--dtype bfloat16); fi
    echo "== $config" >&2
    ./target/release/examples/bench_smollm2 --batch 8 --seq 128 --rank 8 "${ours[@]}" 2>/dev/null \
        | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['config']='$config'; print(json.dumps(d))" >> "$OUT"
    "$PEFT_PYTHON" "$PEFT_SCRIPT" --model-dir "$PEFT_MODEL_DIR" --batch 8 --seq 128 --rank 8 --threads 2 \
        --no-generate --no-merge "${peft[@]}" 2>/dev/null \
        | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['config']='$config'; print(json.dumps(d))" >> "$OUT"
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ours = {r["config"]: r for r in rows if r.get("impl") == "lora-from-scratch"}
peft = {r["config"]: r for r in rows if r.get("bench") == "peft_baseline"}
host = next(iter(ours.values()))["host"]
print(f"host: {host['cpu_model']} (cpu family {host['cpu_family']}, model {host['cpu_model_number']}), "
      f"{host['threads']} threads, AVX512_BF16 {'yes' if host['avx512_bf16'] else 'no'}")
print()
print("| config | this crate | PyTorch + PEFT | speed | memory | matmul GFLOP/s here | roofline fraction |")
print("|---|---|---|---|---|---|---|")
for c, o in ours.items():
    p = peft[c]
    print(f"| {c} | {o['tokens_per_s']:.0f} tok/s, {o['peak_rss_mib']/1024:.2f} GiB "
          f"| {p['tokens_per_s']:.0f} tok/s, {p['peak_rss_mib']/1024:.2f} GiB "
          f"| {o['tokens_per_s']/p['tokens_per_s']:.2f}x | {o['peak_rss_mib']/p['peak_rss_mib']:.2f}x "
          f"| {o['matmul_gflops']:.0f} | {o['roofline_fraction']:.2f} |")
PY
