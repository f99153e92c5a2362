"""The one map between dtype names (CLI flags, configs, results files) and torch dtypes. The names need no torch
import, so argument parsers stay fast."""

from __future__ import annotations

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def to_dtype(name: str):
    """``"float32"`` / ``"float16"`` / ``"bfloat16"`` -> the torch dtype; ValueError naming the choices otherwise."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the name :func:`to_dtype` reads back)."""
    return str(dtype).removeprefix("torch.")
