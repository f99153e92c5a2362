"""COCO 2014 text-to-image benchmark (paper Table 2): 5k random caption-image pairs, SD 1.5 at 512² with 25 steps,
UPLiFT 512 -> 1024, FID against the real images, seconds per image at batch 4.

Run it with ``uplift-diffusion eval coco --annotations captions_val2014.json --images val2014/ --output OUT`` or
``python -m uplift_diffusion eval coco ...`` (same arguments).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from uplift_diffusion.eval.common import sample
from uplift_diffusion.eval.text2img import Row, run_text2img_benchmark

from uplift_diffusion.utils.errors import InputError, InputNotFoundError

HEADERS = ("Model", "Steps", "Method", "Params (M)", "Resolution", "s/img ↓", "FID ↓")


def load_coco_pairs(annotations: str | os.PathLike, images: str | os.PathLike, num_samples: int | None = 5000,
                    seed: int = 0) -> list[tuple[str, str]]:
    """``num_samples`` random (caption, image path) pairs: distinct images drawn with ``seed`` among those with a
    caption and a file in ``images``, each with one of its captions drawn with the same generator."""
    annotations, images = Path(annotations), Path(images)
    if not annotations.is_file():
        raise InputNotFoundError(f"COCO annotations file not found: {annotations}")
    if not images.is_dir():
        raise InputNotFoundError(f"COCO image folder not found: {images}")
    try:
        data = json.loads(annotations.read_text())
        files = {img["id"]: img["file_name"] for img in data["images"]}
        captions: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{annotations} is not a COCO captions file (needs 'images' with id / file_name and "
                         f"'annotations' with image_id / caption): {err}") from None
    ids = sorted(i for i in captions if i in files and (images / files[i]).is_file())
    if not ids:
        raise InputError(f"none of the images of {annotations} are in {images}")
    chosen = sample(ids, num_samples, seed)
    rng = np.random.default_rng(seed + 1)
    return [(captions[i][int(rng.integers(len(captions[i])))], str(images / files[i])) for i in chosen]


def run_coco_benchmark(annotations: str | os.PathLike, images: str | os.PathLike, rows: Sequence[Row],
                       output_dir: str | os.PathLike, num_samples: int | None = 5000, seed: int = 0,
                       batch_size: int = 4, **kwargs) -> dict | None:
    """Sample the pairs (:func:`load_coco_pairs`) and run :func:`~uplift_diffusion.eval.text2img.run_text2img_benchmark`
    with latency at batch 4 and no CLIP score; ``kwargs`` go to it (``limit``, ``fid_factory``, ``latency``, ...).
    ``None`` on the processes other than the main one under ``accelerate launch``."""
    pairs = load_coco_pairs(annotations, images, num_samples, seed)
    extra = dict(kwargs.pop("extra_config", None) or {}, annotations=str(annotations), images=str(images),
                 num_samples=num_samples, caption_choice="one random caption per sampled image")
    kwargs.setdefault("latency_batch", 4)
    return run_text2img_benchmark("coco", pairs, rows, output_dir, HEADERS, seed=seed, batch_size=batch_size,
                                  extra_config=extra, **kwargs)

