#!/usr/bin/env python3
"""A SmolLM2-135M-shaped checkpoint with transformers' random initialisation, from a config.json:
the GPU check's model where the real weights cannot travel (64 MiB carry limit, no network).
Speed does not depend on the weights' values.

  python3 scripts/make_random_smollm2.py CONFIG_JSON OUT_DIR
"""
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM

config = AutoConfig.from_pretrained(sys.argv[1])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
model.save_pretrained(sys.argv[2], safe_serialization=True)
print(f"random {config.model_type} with {sum(p.numel() for p in model.parameters()):,} parameters in {sys.argv[2]}")
