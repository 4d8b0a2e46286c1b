#!/usr/bin/env python3
"""Reference fixtures from Hugging Face transformers, for tests/models_reference.rs.

Run from the repository root in a venv with torch, transformers, tokenizers and gguf
(see ../shared/bench/README.md for one that works from PyPI alone):

    python scripts/make_fixtures.py [--gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf] [--only NAME ...]

Writes, under tests/fixtures/:
  tiny-gpt2/, tiny-llama/,  a small random model saved with save_pretrained (config.json,
  tiny-qwen2/, tiny-mistral/
                            model.safetensors) and reference.safetensors: input_ids, the logits
                            transformers computes for them, and the greedy continuation its
                            generate() picks (KV cache on).
  smollm2/tokenizer_ids.json  ids of the tokenizer transformers builds from the GGUF, for strings
                            with unicode, digits and leading spaces (what our GGUF tokenizer must give).
  smollm2/gguf_logits.safetensors  transformers' logits for the GGUF model on a fixed prompt.
The random models are seeded, so rerunning gives the same files.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

OUT = "tests/fixtures"


def save_reference(model, out, vocab):
    """input_ids [2, 7], logits [2, 7, vocab] and a 6-token greedy continuation of row 0."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 7), generator=g)
    with torch.no_grad():
        logits = model(ids).logits
        greedy = model.generate(ids[:1], max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=True,
                                pad_token_id=0)[0, ids.shape[1]:]
    save_file({"input_ids": ids.to(torch.int64).contiguous(), "logits": logits.float().contiguous(),
               "greedy_ids": greedy.to(torch.int64).contiguous()}, os.path.join(out, "reference.safetensors"))


def perturb(model, pick):
    """Random init leaves biases at zero and norms at one: add N(0, 0.1) noise to the parameters
    `pick(name)` selects, in `named_parameters` order, so the tests see them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if pick(name):
                p.add_(0.1 * torch.randn_like(p))


def save_tiny(model, name):
    """The model (save_pretrained) and its reference outputs under tests/fixtures/<name>."""
    out = os.path.join(OUT, name)
    model.save_pretrained(out, safe_serialization=True)
    save_reference(model, out, model.config.vocab_size)


def tiny_gpt2():
    torch.manual_seed(0)
    # Small but with every GPT-2 part: 2 blocks, 4 heads, biases everywhere, tied head.
    cfg = GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).eval()
    perturb(model, lambda name: name.endswith("bias") or ".ln_" in name)
    save_tiny(model, "tiny-gpt2")


def tiny_llama():
    torch.manual_seed(0)
    # Grouped-query attention (4 heads, 2 kv heads), untied head, rope theta as SmolLM2's.
    cfg = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    perturb(model, lambda name: "norm" in name)
    save_tiny(model, "tiny-llama")


def tiny_qwen2():
    torch.manual_seed(0)
    # Qwen2.5's shape in small: q, k, v biases, tied head, rope theta 1e6, grouped-query heads.
    # The window is on (use_sliding_window) from layer 1 on (max_window_layers), 4 keys wide, so
    # the 7-token reference has layer 0 plain and layer 1 sliding (Qwen2.5's own configs turn it off).
    cfg = Qwen2Config(vocab_size=103, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                      use_sliding_window=True, sliding_window=4, max_window_layers=1,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = Qwen2ForCausalLM(cfg).eval()
    perturb(model, lambda name: "norm" in name or name.endswith("bias"))
    save_tiny(model, "tiny-qwen2")


def tiny_mistral():
    torch.manual_seed(0)
    # Mistral: Llama's names, no biases, a sliding window of 4 keys on every layer (shorter than
    # the 7-token reference and its 6 generated tokens), untied head, explicit head_dim.
    cfg = MistralConfig(vocab_size=107, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4, tie_word_embeddings=False,
                        bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = MistralForCausalLM(cfg).eval()
    perturb(model, lambda name: "norm" in name)
    save_tiny(model, "tiny-mistral")


TOKENIZER_SAMPLES = [
    "The capital of France is",
    " leading space",
    "  two leading spaces and trailing  ",
    "Digits 12345 and 3.14159, year 2024!",
    "Ünïcödé: naïve café, 東京, emoji 🙂 and ß",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "tabs\tand\nnewlines\n\n  indented",
    "don't won't it's I'M",
]


def smollm2(gguf_path):
    folder, name = os.path.split(gguf_path)
    out = os.path.join(OUT, "smollm2")
    os.makedirs(out, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ids = [tok(s, add_special_tokens=False).input_ids for s in TOKENIZER_SAMPLES]
    with open(os.path.join(out, "tokenizer_ids.json"), "w") as f:
        json.dump({"source": "transformers AutoTokenizer from " + name, "samples": TOKENIZER_SAMPLES, "ids": ids},
                  f, indent=1, ensure_ascii=False)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    prompt = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(prompt).logits[0]
    # Greedy continuations (KV cache on): the plain prompt, and a chat turn through the model's
    # own chat template.
    with torch.no_grad():
        completion = model.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.shape[1]:]
        chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                       tokenize=False, add_generation_prompt=True)
        chat_ids = tok(chat, return_tensors="pt", add_special_tokens=False).input_ids
        reply = model.generate(chat_ids, max_new_tokens=24, do_sample=False)[0, chat_ids.shape[1]:]
    # All positions on the first 2048 ids, and the whole vocabulary at the last position.
    save_file({"input_ids": prompt[0].to(torch.int64).contiguous(),
               "logits_head": logits[:, :2048].contiguous(),
               "logits_last": logits[-1].contiguous(),
               "completion_ids": completion.to(torch.int64).contiguous(),
               "chat_ids": chat_ids[0].to(torch.int64).contiguous(),
               "chat_reply_ids": reply.to(torch.int64).contiguous()}, os.path.join(out, "gguf_logits.safetensors"))
    print("completion:", repr(tok.decode(completion)))
    print("chat prompt:", repr(chat))
    print("chat reply:", repr(tok.decode(reply)))


def bleu_cases():
    """Corpus BLEU of ../shared/bench/peft_e2e_task.py on real E2E sentences, perturbed, so our
    corpus_bleu can be checked against the baseline's own function."""
    import csv
    import random
    import sys
    if not os.path.exists("../shared/bench/peft_e2e_task.py"):
        print("bleu_reference.json kept: ../shared/bench (the baseline's scripts) is not beside this checkout")
        return
    sys.path.insert(0, "../shared/bench")
    from peft_e2e_task import bleu
    rows = list(csv.DictReader(open("data/e2e/devset.csv", encoding="utf-8")))
    refs = {}
    for r in rows:
        refs.setdefault(r["mr"], []).append(r["ref"])
    mrs = list(refs)[:40]
    rnd = random.Random(3)
    cases = []
    for c in range(6):
        chosen = rnd.sample(mrs, 5)
        hyps = []
        for m in chosen:
            words = rnd.choice(refs[m]).split()
            if c % 2 == 1 and len(words) > 4:  # drop and swap words
                del words[rnd.randrange(len(words))]
                i = rnd.randrange(len(words) - 1)
                words[i], words[i + 1] = words[i + 1], words[i]
            if c == 4:
                words = words[: max(1, len(words) // 2)]  # short outputs: brevity penalty
            hyps.append(" ".join(words))
        references = [refs[m] if c != 2 else refs[m][1:] or refs[m] for m in chosen]
        cases.append({"hypotheses": hyps, "references": references, "bleu": bleu(hyps, references)})
    with open(os.path.join(OUT, "bleu_reference.json"), "w") as f:
        json.dump({"source": "bleu() of ../shared/bench/peft_e2e_task.py on E2E devset sentences", "cases": cases},
                  f, indent=1)


PEFT_TARGETS = {
    "tiny-gpt2": ["c_attn", "mlp.c_proj"],
    "tiny-llama": ["q_proj", "v_proj", "down_proj"],
    # Qwen2's biased q, k, v and its unbiased o and MLP.
    "tiny-qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
    "tiny-mistral": ["q_proj", "v_proj", "gate_proj"],
}


def peft_fixtures(models):
    """Adapters both ways. `<model>-from-peft/`: an adapter made and saved by PEFT (GPT-2 c_attn
    with fan_in_fan_out, Llama q/v, Qwen2 q/k/v/o, Mistral q/v/gate), with PEFT's logits. `<model>-from-rust/` (written by
    `cargo run --example interop_adapters`): PEFT loads our adapter and records its logits."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file
    for name, targets in [(m, PEFT_TARGETS[m]) for m in models if m in PEFT_TARGETS]:
        base_dir = os.path.join(OUT, name)
        ids = load_file(os.path.join(base_dir, "reference.safetensors"))["input_ids"]
        torch.manual_seed(2)
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM",
                         fan_in_fan_out=name == "tiny-gpt2")
        pm = get_peft_model(base, cfg).eval()
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.normal_(0.0, 0.1)
            logits = pm(ids).logits
        out = os.path.join(OUT, "peft", f"{name}-from-peft")
        pm.save_pretrained(out)
        save_file({"input_ids": ids, "logits": logits.contiguous()}, os.path.join(out, "reference.safetensors"))
        ours = os.path.join(OUT, "peft", f"{name}-from-rust")
        if os.path.isdir(ours):
            fresh = AutoModelForCausalLM.from_pretrained(base_dir).eval()
            loaded = PeftModel.from_pretrained(fresh, ours).eval()
            with torch.no_grad():
                logits = loaded(ids).logits
            save_file({"input_ids": ids, "logits": logits.contiguous()}, os.path.join(ours, "peft_logits.safetensors"))
        # A merged model this crate exported as a Hugging Face folder: transformers' logits.
        merged = os.path.join(OUT, "merged", name)
        if os.path.isdir(merged):
            m = AutoModelForCausalLM.from_pretrained(merged).eval()
            with torch.no_grad():
                logits = m(ids).logits
            save_file({"input_ids": ids, "logits": logits.contiguous()},
                      os.path.join(merged, "transformers_logits.safetensors"))
    # GPT-2 q and v slice adapters, exported for PEFT by the block construction.
    split = os.path.join(OUT, "peft", "tiny-gpt2-split-from-rust")
    if "tiny-gpt2" in models and os.path.isdir(split):
        base_dir = os.path.join(OUT, "tiny-gpt2")
        ids = load_file(os.path.join(base_dir, "reference.safetensors"))["input_ids"]
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir).eval(), split).eval()
        with torch.no_grad():
            logits = loaded(ids).logits
        save_file({"input_ids": ids, "logits": logits.contiguous()}, os.path.join(split, "peft_logits.safetensors"))


MODELS = {"tiny-gpt2": tiny_gpt2, "tiny-llama": tiny_llama, "tiny-qwen2": tiny_qwen2, "tiny-mistral": tiny_mistral}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (from scripts/fetch-smollm2.sh)")
    ap.add_argument("--only", nargs="+", choices=list(MODELS), help="only these tiny models and their PEFT fixtures")
    args = ap.parse_args()
    models = args.only or list(MODELS)
    for m in models:
        MODELS[m]()
    if not args.only:
        bleu_cases()
    peft_fixtures(models)
    if args.gguf:
        smollm2(args.gguf)
    print("fixtures written under", OUT)
