"""Super-resolution benchmark end to end on a tiny fixture (tiny real VAE, tiny-vae UPLiFT, a small FID feature
extractor), resuming after an interruption, the CLI, and the real taef2 on real photos."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_helpers import SmallFeatures, tiny_vae
from PIL import Image
from uplift_diffusion.eval.metrics import FID
from uplift_diffusion.eval.sr import load_pair, run_sr_benchmark

from uplift_diffusion import UPLiFTModel


def _run(folder, out, **kwargs):
    torch.manual_seed(0)
    upsampler = UPLiFTModel.from_preset("tiny-vae").eval()
    kwargs.setdefault("size", 64)
    return run_sr_benchmark(folder, tiny_vae(), out, upsampler=upsampler, scale=4, batch_size=2,
                            fid_factory=lambda: FID("torchmetrics", feature_extractor=SmallFeatures()),
                            patch_size=32, **kwargs)


def _stable(results):
    return {k: v for k, v in results.items() if k != "timings"}


def test_sr_benchmark_end_to_end_and_resume(image_folder, tmp_path):
    out = tmp_path / "out"
    first = _run(image_folder, out)
    assert set(first["metrics"]) == {"uplift", "latent-bilinear", "latent-nearest", "pixel-bicubic"}
    for m in first["metrics"].values():
        assert m["num_images"] == 5 and 0 < m["ssim"] <= 1 and m["psnr"] > 5
        assert 0 < m["saturation_ratio"] < 3 and 0 < m["contrast_ratio"] < 3 and 0 < m["grid_ratio"] < 20
        assert m["fid"] > 0 and m["patch_fid"] > 0  # generated images always differ from the real ones
    assert first["metrics"]["uplift"]["iterations"] == 2 and first["metrics"]["latent-nearest"]["iterations"] == 1
    assert first["config"]["skipped_too_small"] == ["small.png"]
    assert len(list((out / "images" / "uplift").glob("*.png"))) == 5
    assert (out / "samples.png").is_file() and "| UPLiFT | 2 |" in (out / "table.md").read_text()
    saved = Image.open(out / "images" / "latent-nearest" / "00000_img0.png")
    assert saved.size == (64, 64)

    # an interruption: results.json and some images never written; the rerun redoes only those
    (out / "results.json").unlink()
    for path in sorted((out / "images" / "uplift").glob("*.png"))[2:]:
        path.unlink()
    kept = (out / "images" / "latent-bilinear" / "00000_img0.png").stat().st_mtime_ns
    second = _run(image_folder, out)
    assert _stable(second) == _stable(first)
    assert (out / "images" / "latent-bilinear" / "00000_img0.png").stat().st_mtime_ns == kept
    assert (out / "fid_real_torchmetrics-custom.npz").is_file()  # reusable real statistics


def test_sr_protocol_downsample_and_limit(image_folder, tmp_path):
    hr, lr = load_pair(image_folder / "img1.png", 64, 4)
    crop = np.asarray(Image.open(image_folder / "img1.png"))[4:68, 8:72].copy()
    assert torch.equal(hr, torch.from_numpy(crop).permute(2, 0, 1))
    expected = F.interpolate(hr[None].float() / 127.5 - 1, size=16, mode="bilinear", align_corners=False)
    assert lr.dtype == torch.uint8  # stored as 8 bits, as a user's low-res file is
    assert torch.equal(lr, (((expected[0] + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8))
    _, lr_bicubic = load_pair(image_folder / "img1.png", 64, 4, downsample="bicubic")
    pil = Image.fromarray(crop).resize((16, 16), Image.BICUBIC)
    assert torch.equal(lr_bicubic, torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
    results = _run(image_folder, tmp_path / "limited", limit=2, methods=["latent-bilinear"])
    assert results["metrics"]["latent-bilinear"]["num_images"] == 2
    with pytest.raises(ValueError, match="no image"):
        _run(image_folder, tmp_path / "big", size=512)
    with pytest.raises(ValueError, match="unknown method"):
        _run(image_folder, tmp_path / "bad", methods=["bicubic"])


def test_sr_cli(image_folder, tmp_path, capsys):
    from uplift_diffusion.cli import main

    tiny_vae().save_pretrained(tmp_path / "vae")
    args = ["eval", "sr", "--images", str(image_folder), "--vae", str(tmp_path / "vae"), "--random-upsampler",
            "tiny-vae", "--output", str(tmp_path / "cli"), "--size", "64", "--fid-backend", "none", "--limit", "2",
            "--device", "cpu"]
    assert main(args) == 0
    assert "| Bilinear | 1 |" in capsys.readouterr().out
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results["config"]["fid"] is None and "fid" not in results["metrics"]["uplift"]
    assert main(["eval", "sr", "--images", str(tmp_path / "none"), "--vae", str(tmp_path / "vae"),
                 "--random-upsampler", "tiny-vae", "--output", str(tmp_path / "x"), "--fid-backend", "none"]) == 2


def test_sr_with_real_taef2_on_real_faces(shared_dir, tmp_path):
    from uplift_diffusion.backbones.taef2 import TAEF2

    vae = TAEF2.from_pretrained(shared_dir / "weights" / "taef2").eval()
    torch.manual_seed(0)
    upsampler = UPLiFTModel.from_preset("tiny-vae", in_channels=32).eval()
    results = run_sr_benchmark(shared_dir / "data" / "faces" / "celeba_hq", vae, tmp_path / "faces",
                               upsampler=upsampler, methods=["uplift", "latent-bilinear"], size=128, limit=1)
    bilinear = results["metrics"]["latent-bilinear"]
    assert bilinear["ssim"] > 0.3 and bilinear["psnr"] > 15  # a real autoencoder: a recognisable face

    # a model whose output is noise scores clearly below latent bilinear (a wrong pipeline would not rank them)
    def noise(features, encoded, generator=None, **_):  # latents of the right size and scale, no signal
        b, c, h, w = features.shape
        return torch.randn(b, c, 2 * h, 2 * w) * features.std() + features.mean()

    upsampler.upscale_step = noise
    noisy = run_sr_benchmark(shared_dir / "data" / "faces" / "celeba_hq", vae, tmp_path / "noise",
                             upsampler=upsampler, methods=["uplift"], size=128, limit=1, color_correction=False)
    assert noisy["metrics"]["uplift"]["ssim"] < bilinear["ssim"] - 0.1
    assert noisy["metrics"]["uplift"]["psnr"] < bilinear["psnr"] - 3


def test_results_json_holds_paths_dtypes_and_scalars(tmp_path):
    from pathlib import Path

    from uplift_diffusion.eval.common import write_json_atomic

    # a model loaded with from_pretrained(Path(...)) carries a Path in its config (_name_or_path)
    write_json_atomic(tmp_path / "r.json", {"path": Path("/models/x"), "dtype": torch.float16,
                                            "ssim": np.float32(0.5), "psnr": torch.tensor(30.0)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"dtype": "torch.float16", "path": "/models/x",
                                                             "psnr": 30.0, "ssim": 0.5}
    with pytest.raises(TypeError, match="cannot write a object to JSON"):
        write_json_atomic(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists() and not list(tmp_path.glob(".bad.*"))


def test_identity_scores_perfect_ssim_and_fid_separates_sets(image_folder):
    """Relations a wrong metric would break: SSIM of the identity is 1; FID of the real crops against themselves is
    ~0 and clearly larger against brightened crops."""
    from uplift_diffusion.eval.metrics import PairedMetrics

    hr = torch.stack([load_pair(p, 64, 4)[0] for p in sorted(image_folder.glob("img*.png"))])
    paired = PairedMetrics()
    paired.update(hr, hr)
    assert paired.compute()["ssim"] == pytest.approx(1.0)  # the identity scores a perfect SSIM

    def fid(fake):
        metric = FID("torchmetrics", feature_extractor=SmallFeatures())
        metric.update(hr, real=True)
        metric.update(fake, real=False)
        return metric.compute()

    same, shifted = fid(hr), fid((hr.int() + 60).clamp(0, 255).to(torch.uint8))
    assert abs(same) < 1e-6 and shifted > 1e-2  # SmallFeatures is a weak extractor: small but clearly nonzero
