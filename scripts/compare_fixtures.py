#!/usr/bin/env python3
"""Compare the fixtures in the working tree with the committed ones (git HEAD), after
scripts/regenerate-fixtures.sh rewrote them.

JSON is compared by value (PEFT's `target_modules`, a set, in any order); a safetensors file by
its metadata and tensor by tensor (names, dtypes and shapes exactly, values to rtol 1e-4 and an
absolute 1e-5 of the tensor's largest value: torch on another CPU may round a logit differently
in its last bits); any other file byte for byte. A file that git does not track
yet is a difference too. Prints one line per differing file and exits 1 if there is any.

    python scripts/compare_fixtures.py [FOLDER]     # FOLDER defaults to tests/fixtures
"""
import json
import subprocess
import sys

import torch
from safetensors.torch import load


def git(*args):
    return subprocess.run(["git", *args], check=True, capture_output=True).stdout


def metadata(data):
    # safe_open reads a path, so the header is parsed by hand: 8 bytes of length, then JSON.
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__")


def why_tensors_differ(new, old):
    if metadata(new) != metadata(old):
        return f"metadata now {metadata(new)}, committed {metadata(old)}"
    a, b = load(new), load(old)
    if sorted(a) != sorted(b):
        return f"tensor names now {sorted(a)}, committed {sorted(b)}"
    for name in sorted(a):
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{name}: now {x.dtype} {tuple(x.shape)}, committed {y.dtype} {tuple(y.shape)}"
        if x.is_floating_point():
            x, y = x.double(), y.double()
            # A logit near zero may move by the rounding of its larger neighbours: the absolute
            # tolerance scales with the tensor's largest value.
            atol = 1e-5 * max(y.abs().max().item(), 1.0)
            if not torch.allclose(x, y, rtol=1e-4, atol=atol):
                worst = (x - y).abs().max().item()
                return f"{name}: values differ (largest difference {worst:.3g})"
        elif not torch.equal(x, y):
            return f"{name}: values differ"
    return None


def why_differ(path, new, old):
    if new == old:
        return None
    if path.endswith(".json"):
        a, b = json.loads(new), json.loads(old)
        # PEFT keeps target_modules as a set and writes it in hash order: compare it as a set.
        for c in (a, b):
            if isinstance(c, dict) and isinstance(c.get("target_modules"), list):
                c["target_modules"] = sorted(c["target_modules"])
        return None if a == b else f"JSON values differ: now {a}, committed {b}"
    if path.endswith(".safetensors"):
        return why_tensors_differ(new, old)
    return "bytes differ"


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    changed = git("diff", "--name-only", "HEAD", "--", folder).decode().split()
    untracked = git("ls-files", "--others", "--exclude-standard", "--", folder).decode().split()
    diffs = [f"{p}: not committed" for p in untracked]
    for path in changed:
        try:
            new = open(path, "rb").read()
        except FileNotFoundError:
            diffs.append(f"{path}: deleted")
            continue
        why = why_differ(path, new, git("show", f"HEAD:{path}"))
        if why:
            diffs.append(f"{path}: {why}")
    for d in diffs:
        print("differs:", d)
    if diffs:
        sys.exit(1)
    print(f"the regenerated fixtures under {folder} equal the committed ones "
          f"({len(changed)} rewritten with other bytes, equal in value)")


if __name__ == "__main__":
    main()
