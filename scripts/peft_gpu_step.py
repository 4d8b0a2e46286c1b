#!/usr/bin/env python3
"""PyTorch + PEFT training step on a CUDA GPU, in the shape of bench_smollm2 (the GPU check's
PyTorch side; ../shared/bench/peft_baseline.py is CPU-only). One configuration per process;
prints ONE JSON line: step time median, tokens/s, peak GPU memory.

  python3 scripts/peft_gpu_step.py --model-dir DIR --targets qv --dtype bfloat16
"""
import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", default="qv", choices=["qv", "all"])
    p.add_argument("--full-ft", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda", help="cuda, or cpu to rehearse the script")
    a = p.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dtype = getattr(torch, a.dtype)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, torch_dtype=dtype, attn_implementation="sdpa").to(dev)
    if not a.full_ft:
        targets = ["q_proj", "v_proj"] if a.targets == "qv" else "all-linear"
        model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules=targets, lora_dropout=0.0))
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4 if not a.full_ft else 1e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq), generator=g).to(dev)
    times = []
    for i in range(a.warmup + a.steps):
        sync()
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    print(json.dumps({
        "impl": "pytorch+peft", "device": torch.cuda.get_device_name(0) if cuda else "cpu", "mode": "full_ft" if a.full_ft else "lora",
        "targets": a.targets, "dtype": a.dtype, "batch": a.batch, "seq": a.seq, "step_s_median": step,
        "tokens_per_s": a.batch * a.seq / step, "loss": float(loss),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "versions": {"torch": torch.__version__},
    }))


if __name__ == "__main__":
    main()
