"""Tiny real components for the training tests: images on disk, a random-init taef2-layout autoencoder, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from uplift_diffusion.backbones.taef2 import TAEF2
from uplift_diffusion.training.backbones import VAEBackbone
from uplift_diffusion.training.config import TrainConfig

TINY_MODEL = {"in_channels": 4, "noise_channels": 2}


def write_images(folder: Path, count: int = 3, size: tuple[int, int] = (56, 40), nested: bool = True) -> list[Path]:
    """Smooth random RGB images (some in a subfolder) so that crops and downscales are meaningful."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        sub = folder / "sub" if nested and i % 2 else folder
        sub.mkdir(parents=True, exist_ok=True)
        coarse = rng.random((size[1] // 8, size[0] // 8, 3))
        image = Image.fromarray((coarse * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
        paths.append(sub / f"img{i}.png")
        image.save(paths[-1])
    return paths


def tiny_taef2(seed: int = 0) -> TAEF2:
    torch.manual_seed(seed)
    return TAEF2(latent_channels=4, channels=8, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1)).eval()


def tiny_backbone(seed: int = 0) -> VAEBackbone:
    return VAEBackbone(tiny_taef2(seed), name="tiny-taef2")


def tiny_config(tmp_path: Path, image_dir: Path, **overrides) -> TrainConfig:
    data = {
        "output_dir": str(tmp_path / "run"),
        "max_steps": 6,
        "batch_size": 2,
        "checkpoint_every": 2,
        "keep_last": 2,
        "log_every": 1,
        "preview_images": 1,
        "model": {"preset": "tiny-vae", "overrides": dict(TINY_MODEL)},
        "backbone": {"type": "taef2", "path": str(tmp_path / "taef2")},
        "data": {"sources": [{"type": "folder", "path": str(image_dir)}], "crop_size": 32, "views_per_image": 2,
                 "cache_dir": str(tmp_path / "cache")},
        "loss": {"depths": [1, 2], "noise_sigma": 0.5},
    }
    data.update(overrides)
    return TrainConfig.from_dict(data)
