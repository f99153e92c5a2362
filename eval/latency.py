"""Latency protocol of the paper (appendix B.2): optional ``torch.compile``, 3 warm-up batches, then the mean over 10
timed batches; device and dtype are recorded with the numbers."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from uplift_diffusion.utils.device import synchronize
from uplift_diffusion.utils.dtypes import dtype_name
from uplift_diffusion.utils.errors import InputError

WARMUP_BATCHES = 3
TIMED_BATCHES = 10


def compile_modules(modules: Iterable[nn.Module | None]) -> None:
    """Compile modules in place (``module.compile()``: unlike ``torch.compile(module)`` this keeps state-dict keys
    free of the ``_orig_mod.`` prefix)."""
    for module in modules:
        if module is not None:
            module.compile()


def measure_latency(
    fn: Callable[[], object],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    batch_size: int = 1,
    warmup: int = WARMUP_BATCHES,
    iterations: int = TIMED_BATCHES,
    compiled: bool = False,
) -> dict:
    """Time ``fn`` (one batch per call) with ``warmup`` untimed calls, then ``iterations`` timed calls.

    Args:
        fn: runs one batch end to end (it must create its own inputs / generators if they matter).
        device: where it runs (synchronised before and after every timed call on CUDA / MPS).
        dtype: the weights' dtype, recorded.
        batch_size: images per call; ``seconds_per_image`` is the mean divided by it.
        warmup / iterations: untimed and timed calls (3 and 10 in the paper).
        compiled: whether the modules were compiled (recorded; see :func:`compile_modules`).

    Returns:
        ``{"mean_s", "std_s", "min_s", "seconds_per_image", "batch_size", "warmup", "iterations", "device",
        "dtype", "compiled"}``.
    """
    if warmup < 0 or iterations < 1 or batch_size < 1:
        raise InputError(f"need warmup >= 0, iterations >= 1 and batch_size >= 1; got {warmup}, {iterations}, "
                         f"{batch_size}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    mean = statistics.fmean(times)
    return {
        "mean_s": mean, "std_s": statistics.pstdev(times), "min_s": min(times), "seconds_per_image": mean / batch_size,
        "batch_size": batch_size, "warmup": warmup, "iterations": iterations,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "dtype": dtype_name(dtype) if dtype is not None else None, "compiled": compiled,
    }
