"""NF4 reference values from bitsandbytes, for tests/t09_qlora.rs.

Run from the repository root in the fixtures venv plus `pip install bitsandbytes` (0.50.2 was
used; its CPU backend quantizes without a GPU). Writes tests/fixtures/nf4/bnb_nf4.safetensors:
for each case, the input `<case>.x` (f32), bitsandbytes' packed 4-bit codes `<case>.codes`
(u8, two per byte) and per-block absmax `<case>.absmax` (f32, block size 64, no double
quantization), and the code book `code` (16 f32 levels).
"""
import bitsandbytes
import bitsandbytes.functional as F
import torch
from safetensors.torch import save_file

torch.manual_seed(0)
cases = {
    # Weights of a small layer: 18 full blocks.
    "layer": torch.randn(12, 96),
    # Several scales and a heavy tail, 64 blocks.
    "mixed": torch.cat([torch.randn(1024) * 0.02, torch.randn(1024) * 3.0, torch.distributions.StudentT(3.0).sample((2048,))]),
}
out = {}
for name, x in cases.items():
    x = x.float().contiguous()
    q, state = F.quantize_4bit(x, blocksize=64, compress_statistics=False, quant_type="nf4")
    out[f"{name}.x"] = x.reshape(-1)
    out[f"{name}.codes"] = q.reshape(-1).contiguous()
    out[f"{name}.absmax"] = state.absmax.float().contiguous()
    out["code"] = state.code.float().contiguous()
save_file(out, "tests/fixtures/nf4/bnb_nf4.safetensors", metadata={"bitsandbytes": bitsandbytes.__version__})
print({k: tuple(v.shape) for k, v in out.items()})
