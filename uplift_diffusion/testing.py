"""Reference helpers that the tests and the benchmarks share (kept in the package so that benchmarks never import
test files):

- :data:`SHARED`: the read-only data folder (photos, weights, the spec and its fixtures), see :func:`find_shared`;
- :func:`reference_weights`: the deterministic weights of ``<shared>/spec/fixtures`` (the rule in its README),
  rebuilt in the published key layout from the key files in ``<shared>/spec``;
- :func:`direct_local_attend`: the direct, materialising Local Attender, the comparison point of the fast paths
  (tests/test_attender_paths.py) and of benchmarks/attender_speed.py.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F


def _checkout_root(start: Path) -> Path | None:
    """The source checkout of uplift-diffusion that contains ``start`` (a folder with ``pyproject.toml`` and the
    ``uplift_diffusion`` package), if any."""
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "uplift_diffusion").is_dir():
            return folder
    return None


def find_shared() -> Path:
    """The shared data folder: ``$UPLIFT_SHARED`` if set; else ``shared`` beside the source checkout this package
    was imported from, or (an installed package) beside the checkout holding the working directory. The folder may
    not exist: the tests that need it skip, the benchmarks say so."""
    if os.environ.get("UPLIFT_SHARED"):
        return Path(os.environ["UPLIFT_SHARED"]).expanduser().resolve()
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        root = _checkout_root(start)
        if root is not None:
            return root.parent / "shared"
    return Path.cwd().resolve() / "shared"


SHARED = find_shared()
SPEC = SHARED / "spec"
FIXTURES = SPEC / "fixtures"
KEY_FILES = {
    "sd15-vae": "keys_uplift_sd1.5vae.tsv",
    "dinov2-s14": "keys_uplift_dinov2-s14.tsv",
    "dinov3-splus16": "keys_uplift_dinov3-splus16.tsv",
}


def read_key_file(name: str, spec: Path = SPEC) -> list[tuple[str, tuple[int, ...], str]]:
    """``(key, shape, dtype)`` rows of a published checkpoint's key file (``spec/<name>``, tab-separated)."""
    rows = []
    for line in (Path(spec) / name).read_text().splitlines():
        if line.strip():
            key, shape, dtype = line.split("\t")
            rows.append((key, tuple(ast.literal_eval(shape)), dtype))
    return rows


def reference_weights(key_file: str, spec: Path = SPEC) -> dict[str, torch.Tensor]:
    """The fixtures' deterministic weights for the keys of ``key_file``: key ``i`` draws from seed ``1000 + i``."""
    state = {}
    for i, (key, shape, _) in enumerate(read_key_file(key_file, spec)):
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


def direct_local_attend(
    attention: torch.Tensor, value: torch.Tensor, offsets: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """Stack the n shifted, nearest-upsampled value maps, multiply by the attention, sum over n.

    Args:
        attention: [B, n, cH, cW] weights.
        value: [B, C, H, W] value map (replicate padding at the border).
        offsets: the n (di, dj) offsets in the order of ``attention``'s channels.

    Returns:
        [B, C, cH, cW]. Peak memory is about (n + 1) x the output: the stack is filled slot by slot and multiplied
        in place, the most frugal way to write this formulation.
    """
    b, channels, h, w = value.shape
    n, gh, gw = attention.shape[1:]
    c = gh // h
    r = max(max(abs(di), abs(dj)) for di, dj in offsets)
    padded = F.pad(value, (r, r, r, r), mode="replicate")
    neighbourhood = value.new_empty(b, channels, n, gh, gw)  # [B, C, n, cH, cW]
    for k, (di, dj) in enumerate(offsets):
        shifted = padded[:, :, r + di : r + di + h, r + dj : r + dj + w]  # [B, C, H, W]
        slot = neighbourhood[:, :, k].view(b, channels, h, c, w, c)
        slot.copy_(shifted[:, :, :, None, :, None].expand_as(slot))  # nearest upsampling by c
    return neighbourhood.mul_(attention[:, None]).sum(dim=2)
