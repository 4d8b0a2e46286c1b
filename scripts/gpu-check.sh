#!/usr/bin/env bash
# The checks that need a GPU, prepared here and run on a CUDA machine in one call.
#
#   scripts/gpu-check.sh build      here: build gpu_check and bench_smollm2 with `--features cuda`
#                                   against CUDA 13.0 (PyPI's wheels; the GPU machine's nvcc and
#                                   driver 580 are 13.0, and a driver cannot load PTX from a newer
#                                   nvcc), strip them, pack them into gpu-check/bins.tar.xz and
#                                   check that it and the tracked tree fit the 64 MiB a run may
#                                   carry
#   scripts/gpu-check.sh run        on the GPU machine, with gpu-check/ carried: link to that
#                                   machine's own CUDA libraries, then run
#                                     1. gpu_check: golden logits, f64 gradient checks of every
#                                        training op, a LoRA step against the CPU's (f32, bf16)
#                                     2. bench_smollm2 on the GPU and PyTorch + PEFT on the GPU
#                                        (scripts/peft_gpu_step.py) side by side: LoRA q,v f32 and
#                                        bf16, all-linear bf16, full fine-tuning, on a random
#                                        SmolLM2-135M-shaped checkpoint made there by transformers
#                                        (the real weights do not fit the carry limit; speed does
#                                        not depend on them)
#                                   and write one JSON, $OUT/gpu-check.json (or ./gpu-check.json),
#                                   well inside 8 minutes
#   scripts/gpu-check.sh rehearse   here, no GPU: `run` with every device-dependent step on the
#                                   CPU instead (gpu_check --cpu, bench_smollm2 --cpu,
#                                   peft_gpu_step.py --device cpu with PEFT_PYTHON, a small Llama)
#                                   to prove the script, the bundle and the JSON, not the GPU
#
# With the device tool: `scripts/gpu-check.sh build` here, then one call
#   run(command="bash scripts/gpu-check.sh run", carry=["gpu-check"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
bundle=gpu-check
limit_mib=64

case $mode in
build)
    CUDA_NVCC_VERSION=13.0.88 CUDARC_CUDA_VERSION=13000 \
        CUDA_WHEELS_VENV="$PWD/target/cuda-toolkit/venv-13.0" CUDA_TARGET_DIR="$PWD/target/cuda-13.0" \
        bash scripts/build-cuda.sh --release --example gpu_check --example bench_smollm2
    rm -rf "$bundle"
    mkdir -p "$bundle"
    stripped=$(mktemp -d)
    for bin in gpu_check bench_smollm2; do
        strip -o "$stripped/$bin" "target/cuda-13.0/release/examples/$bin"
    done
    # 62 MiB each, mostly candle's CUDA kernels as PTX text, much of it the same in both: xz over
    # the pair packs them into about 9 MiB.
    tar -C "$stripped" -cf - gpu_check bench_smollm2 | xz -9 -T2 >"$bundle/bins.tar.xz"
    rm -rf "$stripped"
    # What else the run needs travels with the working tree: tests/fixtures, scripts/.
    size=$(du -sm "$bundle" | cut -f1)
    tree=$(git ls-files -z | du -cm --files0-from=- | tail -n 1 | cut -f1)
    echo "gpu-check/: ${size} MiB of binaries; the tracked tree: ${tree} MiB; the limit: ${limit_mib} MiB for both"
    if [ $((size + tree)) -ge $limit_mib ]; then
        echo "too large to carry" >&2
        exit 1
    fi
    ;;
run | rehearse)
    out=${OUT:-.}
    mkdir -p "$out"
    work=$(mktemp -d)
    log="$out/gpu-check.log"
    : >"$log"
    if [ "$mode" = run ]; then
        # The GPU machine's own CUDA libraries: the CUDA 13 wheels PyTorch was installed with,
        # or a toolkit's lib64.
        site=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)
        libs=$( (find "${site:-/nonexistent}/nvidia" /usr/local/cuda/lib64 /usr/local/cuda/targets -name 'libcublas.so.13*' -o -name 'libcudart.so.13*' -o -name 'libcurand.so.10*' -o -name 'libnvrtc.so.13*' 2>/dev/null || true) | xargs -r -n1 dirname | sort -u | paste -sd:)
        export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "CUDA libraries from: $libs" | tee -a "$log"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log" || true
        cpu_flag=() python=python3 config=scripts/smollm2-135m-config.json batch=8 seq=128 steps=10
        peft=(python3 scripts/peft_gpu_step.py)
    else
        : "${PEFT_PYTHON:?rehearse needs PEFT_PYTHON: a venv with torch, transformers and peft}"
        cpu_flag=(--cpu) python=$PEFT_PYTHON batch=2 seq=16 steps=2
        # The binaries need the CUDA libraries to start, even on the CPU: the wheels' copies and
        # the driver stub the build made (here only; never on a GPU machine).
        cuda_home=$(cd target/cuda-toolkit/venv-13.0/lib/python3*/site-packages/nvidia/cu13 && pwd)
        export LD_LIBRARY_PATH="$cuda_home/lib:$cuda_home/lib/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        # A small Llama of SmolLM2's layout, so that the rehearsal's CPU steps take seconds.
        config="$work/small-config.json"
        "$python" - scripts/smollm2-135m-config.json "$config" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
         num_key_value_heads=2, head_dim=16, vocab_size=512)
json.dump(c, open(sys.argv[2], "w"))
PY
        peft=("$python" scripts/peft_gpu_step.py --device cpu)
    fi
    [ -f "$bundle/bins.tar.xz" ] || { echo "no $bundle/bins.tar.xz: run 'scripts/gpu-check.sh build' here and carry gpu-check" >&2; exit 2; }
    bin="$work/bin"
    mkdir -p "$bin"
    xz -dc "$bundle/bins.tar.xz" | tar -C "$bin" -xf -
    echo "== gpu_check" | tee -a "$log"
    checks_rc=0
    timeout 180 "$bin/gpu_check" --fixtures tests/fixtures "${cpu_flag[@]}" >"$work/checks.jsonl" 2>>"$log" || checks_rc=$?
    cat "$work/checks.jsonl" | tee -a "$log"
    echo "== a random SmolLM2-shaped checkpoint" | tee -a "$log"
    timeout 120 "$python" scripts/make_random_smollm2.py "$config" "$work/model" 2>>"$log" | tee -a "$log"
    : >"$work/bench.jsonl"
    for config_name in qv:f32 qv:bf16 all:bf16 full:f32; do
        targets=${config_name%%:*} dtype=${config_name##*:}
        ours=(--batch "$batch" --seq "$seq" --steps "$steps" --warmup 2) theirs=(--batch "$batch" --seq "$seq" --steps "$steps")
        case $targets in
        qv) ours+=(--targets q_proj,v_proj) theirs+=(--targets qv) ;;
        all) ours+=(--targets all-linear) theirs+=(--targets all) ;;
        full) ours+=(--full-ft) theirs+=(--full-ft) ;;
        esac
        if [ "$dtype" = bf16 ]; then ours+=(--bf16) theirs+=(--dtype bfloat16); fi
        echo "== $config_name" | tee -a "$log"
        timeout 120 "$bin/bench_smollm2" --model "$work/model" "${cpu_flag[@]}" "${ours[@]}" 2>>"$log" \
            | sed "s/^{/{\"config\":\"$config_name\",\"side\":\"ours\",/" | tee -a "$work/bench.jsonl" "$log" || true
        timeout 150 "${peft[@]}" --model-dir "$work/model" "${theirs[@]}" 2>>"$log" \
            | sed "s/^{/{\"config\":\"$config_name\",\"side\":\"peft\",/" | tee -a "$work/bench.jsonl" "$log" || true
    done
    "$python" - "$work/checks.jsonl" "$work/bench.jsonl" "$mode" "$out/gpu-check.json" <<'PY'
import json, sys
checks = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
bench = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
pairs = {}
for b in bench:
    pairs.setdefault(b["config"], {})[b["side"]] = b
ratios = {c: p["ours"]["tokens_per_s"] / p["peft"]["tokens_per_s"] for c, p in pairs.items() if len(p) == 2}
result = {"mode": sys.argv[3], "checks_ok": bool(checks) and all(c["ok"] for c in checks), "checks": checks,
          "bench": bench, "speed_ratio_ours_over_peft": ratios}
json.dump(result, open(sys.argv[4], "w"), indent=1)
print(json.dumps({"checks_ok": result["checks_ok"], "checks": len(checks), "speed_ratio_ours_over_peft": ratios}))
PY
    rm -rf "$work"
    exit "$checks_rc"
    ;;
*)
    echo "usage: scripts/gpu-check.sh build | run | rehearse" >&2
    exit 2
    ;;
esac
