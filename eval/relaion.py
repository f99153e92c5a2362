"""reLAION text-to-image benchmark (paper Table 3): 5k random image-caption pairs with both sides >= 1024, SD 1.5
at 25 and 40 steps, with and without UPLiFT 512 -> 1024; CLIP score (ViT-B/32), FID and patch-FID; latency at batch 1.

The data is a parquet / CSV table with an image path column (``image_path``, ``path``, ``file``, ``file_name`` or
``image``) and a caption column (``caption``, ``text``, ``TEXT`` or ``prompt``), or a folder of images with a
same-name ``.txt`` caption next to each. Run it with ``uplift-diffusion eval relaion --data DATA --output OUT`` or
``python -m uplift_diffusion eval relaion ...``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm
from uplift_diffusion.eval.common import sample
from uplift_diffusion.eval.metrics import CLIPScorer
from uplift_diffusion.eval.text2img import Row, run_text2img_benchmark

from uplift_diffusion.utils.errors import InputError, InputNotFoundError
from uplift_diffusion.utils.images import IMAGE_SUFFIXES, image_size

HEADERS = ("Model", "Steps", "Method", "Params (M)", "Resolution", "s/img ↓", "CLIP ↑", "FID ↓", "p-FID ↓")
PATH_COLUMNS = ("image_path", "path", "file", "file_name", "image")
CAPTION_COLUMNS = ("caption", "text", "TEXT", "prompt")


def _table_pairs(table: Path, images_root: Path) -> list[tuple[str, str]]:
    import pandas as pd

    frame = pd.read_parquet(table) if table.suffix.lower() == ".parquet" else pd.read_csv(table)
    path_col = next((c for c in PATH_COLUMNS if c in frame.columns), None)
    caption_col = next((c for c in CAPTION_COLUMNS if c in frame.columns), None)
    if path_col is None or caption_col is None:
        raise InputError(f"{table} needs an image path column (one of {PATH_COLUMNS}) and a caption column (one of "
                         f"{CAPTION_COLUMNS}); it has {list(frame.columns)}")
    return [(str(c), str(images_root / p)) for p, c in zip(frame[path_col], frame[caption_col], strict=True)]


def _folder_pairs(folder: Path) -> list[tuple[str, str]]:
    pairs = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        caption = path.with_suffix(".txt")
        if caption.is_file():
            pairs.append((caption.read_text().strip(), str(path)))
    return pairs


def load_relaion_pairs(data: str | os.PathLike, images_root: str | os.PathLike | None = None, min_side: int = 1024,
                       num_samples: int | None = 5000, seed: int = 0,
                       skipped: dict[str, list[str]] | None = None) -> list[tuple[str, str]]:
    """(caption, image path) pairs whose image exists and has both sides >= ``min_side``; a seeded random
    ``num_samples`` of them (in table order).

    Images that are missing or unreadable are left out, with a warning counting them; pass a dict as ``skipped`` to
    get their paths (``{"missing": [...], "unreadable": [...]}``, recorded in ``results.json`` by the benchmark).
    """
    data = Path(data)
    if data.is_dir():
        pairs = _folder_pairs(data)
    elif data.is_file():
        pairs = _table_pairs(data, Path(images_root) if images_root is not None else data.parent)
    else:
        raise InputNotFoundError(f"reLAION data not found: {data} (a parquet / CSV file or a folder)")
    keep, missing, unreadable = [], [], []
    for caption, path in tqdm(pairs, desc="relaion sizes", unit="img", disable=len(pairs) < 1000):
        try:
            if min(image_size(path)) >= min_side:
                keep.append((caption, path))
        except FileNotFoundError:
            missing.append(path)
        except ValueError:
            unreadable.append(path)
    if missing or unreadable:
        warnings.warn(f"reLAION data {data}: left out {len(missing)} missing and {len(unreadable)} unreadable "
                      f"image(s), e.g. {(missing + unreadable)[0]}", stacklevel=2)
    if skipped is not None:
        skipped.update(missing=missing, unreadable=unreadable)
    if not keep:
        raise InputError(f"no readable image in {data} has both sides >= {min_side} pixels")
    return sample(keep, num_samples, seed)


def run_relaion_benchmark(data: str | os.PathLike, rows: Sequence[Row], output_dir: str | os.PathLike,
                          images_root: str | os.PathLike | None = None, min_side: int = 1024,
                          num_samples: int | None = 5000, seed: int = 0, batch_size: int = 1,
                          clip_factory: Callable[[], CLIPScorer] | None = None, **kwargs) -> dict | None:
    """Sample the pairs (:func:`load_relaion_pairs`) and run
    :func:`~uplift_diffusion.eval.text2img.run_text2img_benchmark` with CLIP score and latency at batch 1;
    ``kwargs`` go to it (``limit``, ``fid_factory``, ``latency``, ...). ``None`` on the processes other than the main
    one under ``accelerate launch``."""
    skipped: dict[str, list[str]] = {}
    pairs = load_relaion_pairs(data, images_root, min_side, num_samples, seed, skipped=skipped)
    extra = dict(kwargs.pop("extra_config", None) or {}, data=str(data), min_side=min_side, num_samples=num_samples,
                 num_missing_images=len(skipped["missing"]), num_unreadable_images=len(skipped["unreadable"]),
                 missing_images=skipped["missing"], unreadable_images=skipped["unreadable"])
    kwargs.setdefault("latency_batch", 1)
    return run_text2img_benchmark("relaion", pairs, rows, output_dir, HEADERS, seed=seed, batch_size=batch_size,
                                  clip_factory=clip_factory, extra_config=extra, **kwargs)

