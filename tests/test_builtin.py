"""The built-in offline pair (taef2 + UPLiFT) shipped as package data: loading, installing, the `upscale` default."""

import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from uplift_diffusion.backbones.vae import decode_latents, encode_latents
from uplift_diffusion.builtin import (
    builtin_names,
    builtin_upsampler_path,
    builtin_vae_path,
    load_builtin_upsampler,
    load_builtin_vae,
)
from uplift_diffusion.cli import main

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "uplift_diffusion" / "weights"
MAX_SHIPPED_BYTES = 15 * 1024 * 1024
GRID_8X_MEAN, GRID_8X_MAX = 1.3, 1.6  # latent-grid ratio bounds for a mesh-free 8x (photos and bicubic score ~1)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_builtin_pair_loads_offline(no_network):
    assert builtin_names() == ["taef2"]
    vae, upsampler = load_builtin_vae(), load_builtin_upsampler(dtype=torch.bfloat16)
    assert vae.config.latent_channels == upsampler.config.in_channels == 32
    assert upsampler.dtype == torch.bfloat16 and not vae.training and not upsampler.training
    assert (builtin_upsampler_path() / "README.md").is_file()
    assert {"LICENSE", "SOURCE.md", "taef2.safetensors"} <= {p.name for p in builtin_vae_path().iterdir()}
    with pytest.raises(ValueError, match="available: taef2"):
        load_builtin_vae("sd15")


def test_shipped_weights_fit_the_size_budget():
    files = [p for p in WEIGHTS.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in files) <= MAX_SHIPPED_BYTES
    tracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--cached", str(WEIGHTS)],
                             cwd=REPO, capture_output=True, text=True)
    if tracked.returncode == 0:  # a git checkout: none of the shipped files may be ignored (*.safetensors is)
        assert {Path(line).name for line in tracked.stdout.split()} >= {p.name for p in files}


def test_from_builtin_pipeline_upscales(no_network):
    from uplift_diffusion import UPLiFTSuperResolutionPipeline

    pipe = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(torch.rand(1, 3, 40, 56), scale=2, output_type="pt").images
    assert out.shape == (1, 3, 80, 112) and torch.isfinite(out).all()


@pytest.mark.slow
def test_non_editable_install_loads_the_builtin_pair_without_the_repository(wheel, tmp_path):
    site, cwd = tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    with zipfile.ZipFile(wheel) as archive:  # what pip installs: the wheel's files (conftest.py builds it)
        archive.extractall(site)
    script = (
        "import json, torch, uplift_diffusion\n"
        "from uplift_diffusion import UPLiFTSuperResolutionPipeline\n"
        "pipe = UPLiFTSuperResolutionPipeline.from_builtin('taef2')\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "out = pipe(torch.rand(1, 3, 32, 32), scale=2, output_type='pt').images\n"
        "print(json.dumps({'file': uplift_diffusion.__file__, 'shape': list(out.shape)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).is_relative_to(site) and result["shape"] == [1, 3, 64, 64]
    assert not (cwd / ".." / "shared").exists()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)))


@pytest.mark.slow
def test_upscale_without_weight_flags_uses_the_trained_builtin_pair(shared_dir, tmp_path, no_network, capsys):
    # A real photo the weights were not trained on; 2x from an antialiased bicubic downscale.
    photo = Image.open(shared_dir / "data" / "photos" / "motorcycle_left.png").convert("RGB")
    high = photo.crop((200, 100, 456, 292))  # 256x192
    low_path = tmp_path / "low.png"
    high.resize((128, 96), Image.Resampling.BICUBIC).save(low_path)

    assert main(["upscale", str(low_path), "-o", str(tmp_path / "out.png"), "--scale", "2"]) == 0
    result = Image.open(tmp_path / "out.png").convert("RGB")
    assert result.size == high.size

    # Interpolating the taef2 latents bilinearly is what an untrained (identity-refiner) model amounts to at best.
    vae = load_builtin_vae()
    low = torch.from_numpy(np.array(Image.open(low_path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    latents = F.interpolate(encode_latents(vae, low), scale_factor=2, mode="bilinear", align_corners=False)
    bilinear = (decode_latents(vae, latents)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    uplift_psnr, bilinear_psnr = _psnr(np.asarray(result), np.asarray(high)), _psnr(bilinear, np.asarray(high))
    assert uplift_psnr > bilinear_psnr + 1.0, (uplift_psnr, bilinear_psnr)
    # and the baseline a user would pick
    bicubic = Image.open(low_path).convert("RGB").resize(high.size, Image.Resampling.BICUBIC)
    bicubic_psnr = _psnr(np.asarray(bicubic), np.asarray(high))
    assert uplift_psnr > bicubic_psnr, (uplift_psnr, bicubic_psnr)


def test_diffusers_empty_float32_notice_is_silenced_and_nothing_else():
    """diffusers 0.42 warns "There are modules in TAEF2 that should be kept in float32: []" on every cast to a dtype,
    even when the list is empty (every run printed it); that one message goes, a real list and other warnings stay."""
    import logging

    from diffusers import ModelMixin

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addHandler(handler)
    try:
        load_builtin_vae("taef2", dtype=torch.float32).to(torch.float32)
        load_builtin_upsampler("taef2").to(torch.float32)

        class KeepsNorms(ModelMixin):
            _keep_in_fp32_modules = ["norm"]

        KeepsNorms().to(torch.float32)
        logger.warning("another diffusers warning")
    finally:
        logger.removeHandler(handler)
    assert not [m for m in messages if "should be kept in float32: []" in m], messages
    assert any("should be kept in float32: ['norm']" in m for m in messages)
    assert "another diffusers warning" in messages


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="at 8x the built-in model's mesh is gone on average (grid ratio 1.16 on these six photos, "
                          "1.12 on BSDS test50) but kodim01's brick wall reads 1.78, above the 1.6 bound")
def test_upscale_8x_has_no_latent_grid_and_beats_bicubic(shared_dir, tmp_path, no_network):
    """8x is three UPLiFT steps; the built-in model was trained for one and two. Through the CLI with no flags, on
    the first six Kodak photos (whole, antialiased PIL bicubic 8x downscale): no more 8-pixel mesh than photos have
    (eval.metrics.grid_ratio_per_image) and a higher PSNR than PIL bicubic on average. Strict xfail until a model
    meets it: it then fails as XPASS and the marker goes."""
    from uplift_diffusion.eval.metrics import grid_ratio_per_image, psnr_per_image

    names = [f"kodim{i:02d}" for i in range(1, 7)]
    (tmp_path / "lr").mkdir()
    originals, bicubics = {}, {}
    for name in names:
        original = Image.open(shared_dir / "data" / "kodak" / f"{name}.png").convert("RGB")
        low = original.resize((original.width // 8, original.height // 8), Image.Resampling.BICUBIC)
        low.save(tmp_path / "lr" / f"{name}.png")
        originals[name], bicubics[name] = original, low.resize(original.size, Image.Resampling.BICUBIC)
    assert main(["upscale", str(tmp_path / "lr"), "-o", str(tmp_path / "out"), "--scale", "8"]) == 0

    def tensor(image):
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]  # Kodak has portrait photos too

    grid, gain = [], []
    for name in names:
        hr, bicubic = tensor(originals[name]), tensor(bicubics[name])
        uplift = tensor(Image.open(tmp_path / "out" / f"{name}_x8.png").convert("RGB"))
        grid.append(float(grid_ratio_per_image(uplift, hr)[0]))
        gain.append(float(psnr_per_image(uplift, hr)[0] - psnr_per_image(bicubic, hr)[0]))
    assert np.mean(grid) < GRID_8X_MEAN and max(grid) < GRID_8X_MAX, grid
    assert np.mean(gain) > 0.0, gain


def test_the_shipped_files_match_their_recorded_digests():
    """Every weights / config file of each built-in folder has its sha256 recorded (``python -m
    uplift_diffusion.builtin`` after retraining) and the installed bytes match it."""
    from uplift_diffusion import builtin

    for pair in builtin.BUILTIN_PAIRS.values():
        for part in (pair.vae, pair.upsampler):
            folder = builtin.weights_folder(part)
            recorded = json.loads((folder / builtin.DIGESTS_FILE).read_text())["sha256"]
            assert sorted(recorded) == sorted(p.name for p in builtin._digested_files(folder))
            builtin.verify_installed(folder)
