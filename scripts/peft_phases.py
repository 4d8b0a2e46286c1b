#!/usr/bin/env python3
"""The PyTorch + PEFT training step split into the phases `bench_smollm2` reports: forward +
loss, backward, optimizer (AdamW step + zero_grad). Same setup as ../shared/bench/peft_baseline.py
(f32, sdpa attention, random token ids as labels, seed 0, two threads, median of the timed steps).

    python scripts/peft_phases.py --model-dir DIR [--targets qv|all|full] [--batch 8 --seq 128]

Prints one JSON line.
"""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

TARGETS = {"qv": ["q_proj", "v_proj"], "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--targets", default="qv", choices=["qv", "all", "full"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    if args.targets == "full":
        lr = 1e-5
    else:
        from peft import LoraConfig, get_peft_model

        lr = 1e-4
        cfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=TARGETS[args.targets],
                         bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    phases = []
    for i in range(args.warmup + args.steps):
        x = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=g)
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if i >= args.warmup:
            phases.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    med = [statistics.median(p[k] for p in phases) for k in range(4)]
    print(json.dumps({
        "impl": "pytorch+peft", "targets": args.targets, "batch": args.batch, "seq": args.seq,
        "forward_s": round(med[0], 4), "backward_s": round(med[1], 4), "optimizer_s": round(med[2], 4),
        "step_s_median": round(med[3], 4), "tokens_per_s": round(args.batch * args.seq / med[3], 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
