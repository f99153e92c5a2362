"""Rebuild the deterministic weights of ../shared/spec/fixtures (rule in its README) in the reference key layout."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPEC = SHARED / "spec"
FIXTURES = SPEC / "fixtures"
KEY_FILES = {
    "sd15-vae": "keys_uplift_sd1.5vae.tsv",
    "dinov2-s14": "keys_uplift_dinov2-s14.tsv",
    "dinov3-splus16": "keys_uplift_dinov3-splus16.tsv",
}


def read_key_file(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (SPEC / name).read_text().splitlines():
        if line.strip():
            key, shape, dtype = line.split("\t")
            rows.append((key, tuple(ast.literal_eval(shape)), dtype))
    return rows


def reference_weights(key_file: str) -> dict[str, torch.Tensor]:
    state = {}
    for i, (key, shape, _) in enumerate(read_key_file(key_file)):
        g = torch.Generator().manual_seed(1000 + i)
        if key.endswith("num_batches_tracked"):
            t = torch.zeros(shape)
        elif key.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        state[key] = t
    return state
