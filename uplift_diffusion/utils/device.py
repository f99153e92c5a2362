"""The one place where the CLI turns ``--device`` / ``--dtype`` into torch objects (torch is imported only when a
command runs, never for ``--help``)."""

from __future__ import annotations

from .dtypes import DTYPE_NAMES
from .errors import InputError, UnavailableError


def add_device_arguments(parser, dtype: bool = True) -> None:
    """``--device`` and (optionally) ``--dtype``, resolved by :func:`resolve_device_dtype`."""
    parser.add_argument("--device", default=None, help="torch device: cpu, cuda, cuda:1, mps (default: cuda if "
                                                       "available, else cpu)")
    if dtype:
        parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                            help="weights dtype (default: float16 on cuda, float32 otherwise; float16 on the CPU is "
                                 "refused: it runs ~100x slower than float32 there)")


def resolve_device_dtype(device: str | None, dtype: str | None = None):
    """``(torch.device, torch.dtype)`` for the CLI's ``--device`` / ``--dtype`` strings.

    Defaults: CUDA when available (float16), else the CPU (float32). Raises a one-line user error for an unknown
    device, a device this machine does not have, an unknown dtype, and float16 on the CPU (PyTorch has no fast
    float16 CPU kernels: a run took ~100x longer than in float32; bfloat16 is fine).
    """
    import torch

    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1, mps)") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if dev.type not in available:
        raise InputError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps")
    if not available[dev.type]():
        raise UnavailableError(f"device {device!r} requested but {dev.type.upper()} is not available on this machine; "
                               f"use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UnavailableError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                               f"device(s) (cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    if dtype is None:
        return dev, torch.float16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPE_NAMES:
        raise InputError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_NAMES)}")
    if dtype == "float16" and dev.type == "cpu":
        raise InputError("--dtype float16 on the CPU is refused: PyTorch has no fast float16 CPU kernels "
                                "(a run took ~100x longer than float32); use float32 (the CPU default) or bfloat16")
    return dev, getattr(torch, dtype)


_WARNED_FLOAT16_CPU = False


def warn_float16_on_cpu(device, dtype) -> None:
    """Once per process: float16 weights on the CPU run ~100x slower than float32 (PyTorch has no fast float16 CPU
    kernels). The CLI refuses ``--dtype float16 --device cpu``; a Python caller (``pipe.to(torch.float16)``) is told."""
    global _WARNED_FLOAT16_CPU
    import torch

    if _WARNED_FLOAT16_CPU or torch.device(device).type != "cpu" or dtype != torch.float16:
        return
    _WARNED_FLOAT16_CPU = True
    import warnings

    warnings.warn("float16 on the CPU runs about 100x slower than float32 (PyTorch has no fast float16 CPU kernels); "
                  "use float32 on the CPU (or bfloat16), float16 on a GPU", UserWarning, stacklevel=3)


def synchronize(device) -> None:
    """Wait for the work queued on ``device`` (CUDA / MPS; nothing to wait for on the CPU), so that a wall-clock
    reading after it counts that work."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
