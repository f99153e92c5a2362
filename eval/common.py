"""What every benchmark run shares: the results folder (images written as they are made, reruns skip finished ones,
``results.json`` written atomically), fixed seeds, library versions, Markdown tables, PNG sample grids, timers."""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from PIL import Image
from tqdm.auto import tqdm

from uplift_diffusion.utils import tables
from uplift_diffusion.utils.errors import InputError
from uplift_diffusion.utils.fingerprint import check_fingerprint, write_fingerprint
from uplift_diffusion.utils.image_ops import float_to_uint8, to_tensor_uint8
from uplift_diffusion.utils.images import load_image
from uplift_diffusion.utils.io import ensure_writable_dir, save_image_atomic, write_json_atomic, write_text_atomic

VERSIONED_PACKAGES = ("uplift-diffusion", "torch", "diffusers", "transformers", "torchmetrics", "torch-fidelity",
                      "clean-fid", "numpy", "scipy", "Pillow")
RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"
GRID_FILE = "samples.png"
FINGERPRINTS_FILE = "fingerprints.json"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every generated image also gets its own generator, see :func:`generators`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generators(seed: int, indices: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per image, seeded with ``seed + index``: an image's noise does not depend on its batch, so a
    rerun that regenerates only some images reproduces them exactly."""
    return [torch.Generator(device).manual_seed(seed + int(i)) for i in indices]


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that decide the numbers."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def chunks(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    """Fixed consecutive chunks of ``indices`` (the same on every run, so that batches are identical on reruns)."""
    if size < 1:
        raise InputError(f"batch size must be >= 1, got {size}")
    for start in range(0, len(indices), size):
        yield list(indices[start:start + size])


def sample(items: Sequence, num: int | None, seed: int) -> list:
    """``num`` items drawn at random without replacement (seeded), in their original order; all when ``num`` is
    None or not smaller than the number of items."""
    if num is None or num >= len(items):
        return list(items)
    keep = sorted(np.random.default_rng(seed).choice(len(items), size=num, replace=False).tolist())
    return [items[i] for i in keep]


def apply_limit(items: Sequence, limit: int | None) -> list:
    """The first ``limit`` items (``--limit N`` for quick runs)."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    return list(items if limit is None else items[:limit])


def center_crop_square(image: Image.Image, size: int | None = None) -> Image.Image:
    """The largest centred square of ``image``, resized (bicubic) to ``size``² when given and different."""
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    return image if size is None or s == size else image.resize((size, size), Image.BICUBIC)


def process_share(batches: Sequence[list[int]], desc: str) -> Iterator[list[int]]:
    """This process's share of ``batches`` (all of them in a single process; under ``accelerate launch`` the
    consecutive slice ``PartialState.split_between_processes`` gives it), with a progress bar on each node's first
    process."""
    state = PartialState()
    with state.split_between_processes(list(batches)) as share:
        yield from tqdm(share, desc=desc, unit="batch", disable=not state.is_local_main_process)


def on_main_process(setup: Callable[[], None]) -> None:
    """Run ``setup`` (checks and records of the results folder) on the main process alone, while the other processes
    of an ``accelerate launch`` wait; an error it raises (a refused folder) is raised on every process, so that all
    stop with the same message instead of the others failing at the next barrier."""
    state = PartialState()
    error = None
    if state.is_main_process:
        try:
            setup()
        except Exception as err:
            if state.num_processes == 1:
                raise
            error = err
    if state.num_processes > 1:
        [error] = broadcast_object_list([error])  # also the barrier: nothing is generated before the claims
        if error is not None:
            raise error


class ResultsFolder:
    """A benchmark's output folder: ``images/<method>/<name>.png`` (written as they are made), ``results.json``,
    ``table.md`` and ``samples.png``."""

    def __init__(self, root: str | os.PathLike):
        self.root = ensure_writable_dir(root)

    def image_path(self, method: str, name: str) -> Path:
        return self.root / "images" / method / f"{name}.png"

    def claim(self, method: str, fingerprint: dict, overwrite: bool = False) -> None:
        """Make ``images/<method>/`` belong to ``fingerprint`` (everything that determines its images).

        Saved images made with another fingerprint (or with none recorded) are refused with a
        :class:`~uplift_diffusion.utils.errors.StaleResultsError` listing what differs, or deleted when
        ``overwrite`` is set; then the fingerprint is recorded in ``fingerprints.json`` before any image is written.
        """
        saved = self.read_json(FINGERPRINTS_FILE) or {}
        folder = self.root / "images" / method
        if folder.is_dir() and any(folder.iterdir()):
            if overwrite:
                shutil.rmtree(folder)
            else:
                check_fingerprint(saved.get(method), fingerprint, f"{folder}",
                                  "pass --overwrite to regenerate them, or use a new --output folder")
        saved[method] = fingerprint
        write_fingerprint(self.root / FINGERPRINTS_FILE, saved)

    def done(self, method: str, names: Sequence[str]) -> bool:
        return all(self.image_path(method, n).is_file() for n in names)

    def save(self, method: str, name: str, image: np.ndarray | Image.Image) -> None:
        path = self.image_path(method, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image_atomic(image if isinstance(image, Image.Image) else Image.fromarray(image), path)

    def generate_missing(self, method: str, names: Sequence[str], batch_size: int,
                         make: Callable[[list[int]], torch.Tensor | np.ndarray], timings: Timings,
                         desc: str) -> None:
        """Make every missing image of ``images/<method>/`` (``names[i]`` is image ``i``), in fixed chunks of
        ``batch_size`` indices (reruns form the same batches, so a regenerated image is bit-identical);
        ``make(indices)`` returns their [B, 3, H, W] tensor or [B, H, W, 3] array in [0, 1] (or uint8), saved as they
        come.

        Under ``accelerate launch`` each process takes its share of the chunks (:func:`process_share`); a chunk whose
        images all exist is skipped, whoever made them, so a stopped run resumes with any number of processes. A chunk
        with some images missing (a run stopped inside it) is made again whole. Call it on every process, after the
        main process claimed the folder (:func:`on_main_process`).
        """
        for idx in process_share(list(chunks(range(len(names)), batch_size)), desc):
            if self.done(method, [names[i] for i in idx]):
                continue
            with timings(f"generate/{method}"):
                images = make(idx)
            for i, image in zip(idx, float_to_uint8(images), strict=True):
                self.save(method, names[i], image)

    def load(self, method: str, name: str) -> torch.Tensor:
        """uint8 [3, H, W] of a saved image."""
        return to_tensor_uint8(load_image(self.image_path(method, name)))

    def write_json(self, name: str, obj: Any) -> Path:
        write_json_atomic(self.root / name, obj)
        return self.root / name

    def read_json(self, name: str) -> Any | None:
        path = self.root / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_results(self, benchmark: str, metrics: dict, config: dict, timings: dict, table: str) -> Path:
        """``results.json`` (atomically) and ``table.md``."""
        write_text_atomic(self.root / TABLE_FILE, table)
        return self.write_json(RESULTS_FILE, {"benchmark": benchmark, "metrics": metrics, "config": config,
                                              "versions": versions(), "timings": timings})


def benchmark_cell(header: str, value: Any) -> str:
    """A benchmark table cell: floats with two decimals (SSIM three), ``None`` as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if header.startswith("SSIM") else f"{value:.2f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A benchmark table (:func:`uplift_diffusion.utils.tables.markdown_table` with :func:`benchmark_cell`)."""
    return tables.markdown_table(headers, rows, cell=benchmark_cell)


def save_grid(rows: Sequence[Sequence[torch.Tensor]], path: str | os.PathLike, tile: int = 256) -> None:
    """A PNG grid: one row per sample, one column per image (uint8 [3, H, W], each resized to ``tile``²)."""
    if not rows or not rows[0]:
        return
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * tile, len(rows) * tile), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            thumb = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((tile, tile), Image.BICUBIC)
            grid.paste(thumb, (x * tile, y * tile))
    save_image_atomic(grid, path)


class Timings:
    """Wall-clock seconds per named phase (summed over repeated phases)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` measured elsewhere as phase ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}

    def gather(self) -> None:
        """Under ``accelerate launch``: every process's seconds summed per phase (a collective: call it on every
        process); ``generate/*`` then counts the work of all processes, not the wall clock."""
        state = PartialState()
        if state.num_processes > 1:
            total: dict[str, float] = {}
            for seconds in gather_object([self.seconds]):
                for name, value in seconds.items():
                    total[name] = total.get(name, 0.0) + value
            self.seconds = total
