"""Shared helpers of the benchmarks: fresh-process cases, timing, peak memory, JSON and a small log-log PNG plot.

Peak memory:
- CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the timed calls.
- CPU: the process's peak resident set (``VmHWM`` of /proc/self/status), reset by writing ``5`` to
  /proc/self/clear_refs after the inputs are built and the warm-up (and any compilation) has run, minus the
  resident set at that moment. This counts every allocation of the timed calls (torch's CPU allocator hands large
  blocks straight to the OS, so freed outputs do not hide later peaks) and none of the compiler's own memory.
  Where clear_refs is not writable, the lifetime peak ``ru_maxrss`` minus the resident set before the first call
  is used instead (that includes the warm-up).
Each case runs in a fresh Python process (:func:`run_case`) so that one case's peak cannot hide another's.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

_MIB = 2**20


def _rss_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of the code run between :meth:`start` and :meth:`stop`, in bytes (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.method = ""

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return
        self.base = _rss_bytes("VmRSS") or 0
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM after clear_refs (peak RSS delta)"
        except OSError:
            self.method = "ru_maxrss delta (includes warm-up)"

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if self.method.startswith("VmHWM"):
            peak = _rss_bytes("VmHWM") or 0
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak - self.base, 0)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5,
               cpu_times: list[float] | None = None) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (synchronised on CUDA). ``cpu_times``:
    a list that receives each call's process CPU seconds too (``time.process_time``: all threads; it depends less on
    other processes' load than wall time does)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu_start)
    return times


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5) -> dict:
    """Warm up, then time ``repeats`` calls and take the peak memory over them."""
    for _ in range(warmup):
        fn()
    peak = PeakMemory(device)
    peak.start()
    cpu_times: list[float] = []
    times = time_calls(fn, device, warmup=0, repeats=repeats, cpu_times=cpu_times)
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "cpu_s": cpu_times,
        "peak_mib": peak.stop() / _MIB,
        "memory_method": peak.method,
    }


def run_case(script: Path, args: Sequence[str], timeout: float = 1800) -> dict:
    """Run ``script --worker args...`` in a fresh Python process; it prints one JSON line as its last line."""
    cmd = [sys.executable, str(script), "--worker", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "args": list(map(str, args))}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_json(path: Path, payload: dict) -> None:
    """Atomic JSON write (the project's one atomic writer)."""
    from uplift_diffusion.utils.io import write_json_atomic

    write_json_atomic(path, payload)


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
    }


def fit_loglog(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def loglog_plot(path: Path, panels: Sequence[dict], size: tuple[int, int] = (520, 400)) -> None:
    """Side-by-side log-log line plots as a PNG (Pillow only; matplotlib is not a dependency).

    Args:
        path: output .png path.
        panels: one dict per panel: ``title``, ``xlabel``, ``ylabel`` and ``series``, a list of
            ``{"label": str, "x": [...], "y": [...]}`` (positive values; missing points as None are skipped).
        size: pixel size of one panel.
    """
    from PIL import Image, ImageDraw

    pw, ph = size
    image = Image.new("RGB", (pw * len(panels), ph), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 62, 14, 28, 46
    for p, panel in enumerate(panels):
        x0 = p * pw
        pts = [(x, y) for s in panel["series"] for x, y in zip(s["x"], s["y"], strict=True) if y]
        lx = [math.log10(x) for x, _ in pts]
        ly = [math.log10(y) for _, y in pts]
        xlo, xhi = math.floor(min(lx)), math.ceil(max(lx))
        ylo, yhi = math.floor(min(ly)), math.ceil(max(ly))
        xhi, yhi = max(xhi, xlo + 1), max(yhi, ylo + 1)

        def to_px(x, y, x0=x0, xlo=xlo, xhi=xhi, ylo=ylo, yhi=yhi):
            u = x0 + left + (math.log10(x) - xlo) / (xhi - xlo) * (pw - left - right)
            v = top + (yhi - math.log10(y)) / (yhi - ylo) * (ph - top - bottom)
            return u, v

        draw.rectangle([x0 + left, top, x0 + pw - right, ph - bottom], outline="black")
        for e in range(xlo, xhi + 1):
            u, _ = to_px(10**e, 10**ylo)
            draw.line([u, ph - bottom, u, ph - bottom + 4], fill="black")
            draw.text((u - 10, ph - bottom + 6), f"1e{e}", fill="black")
        for e in range(ylo, yhi + 1):
            _, v = to_px(10**xlo, 10**e)
            draw.line([x0 + left - 4, v, x0 + left, v], fill="black")
            draw.text((x0 + 6, v - 5), f"1e{e}", fill="black")
        draw.text((x0 + left, 8), panel["title"], fill="black")
        draw.text((x0 + pw // 2 - 40, ph - 18), panel["xlabel"], fill="black")
        draw.text((x0 + left + 4, top + 2), panel["ylabel"], fill=(90, 90, 90))
        for i, s in enumerate(panel["series"]):
            colour = _COLOURS[i % len(_COLOURS)]
            line = [to_px(x, y) for x, y in zip(s["x"], s["y"], strict=True) if y]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
            for u, v in line:
                draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=colour)
            draw.text((x0 + left + 8, top + 16 + 12 * i), s["label"], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
