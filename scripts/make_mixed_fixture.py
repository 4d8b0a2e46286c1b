"""A PEFT adapter with `modules_to_save` beside LoRA, for tests/t11_mixed.rs.

Run from the repository root in the fixtures venv (torch, transformers, peft). On the tiny Llama
fixture: LoRA r=2 on q_proj and v_proj, and modules_to_save=["norm", "lm_head"] (PEFT's suffix
rule selects every RMSNorm and the head). B and the saved modules get random values, so that
every part changes the logits. Writes tests/fixtures/peft_mixed/adapter/ (PEFT's files) and
logits.safetensors (the ids and PEFT's logits).
"""
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained("tests/fixtures/tiny-llama")
config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], modules_to_save=["norm", "lm_head"])
peft = get_peft_model(model, config)
with torch.no_grad():
    for name, p in peft.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            p.add_(torch.randn_like(p) * 0.2)
peft.eval()
peft.save_pretrained("tests/fixtures/peft_mixed/adapter")
ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [5, 3, 5, 8, 9, 7, 9, 3]])
with torch.no_grad():
    logits = peft(input_ids=ids).logits
save_file({"input_ids": ids.to(torch.int64), "logits": logits.float().contiguous()}, "tests/fixtures/peft_mixed/logits.safetensors")
print(logits.shape)
