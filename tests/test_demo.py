"""`uplift-diffusion demo`: offline sample photos, a labelled side-by-side figure and per-photo PSNR / SSIM."""

import json

import pytest
from PIL import Image

from uplift_diffusion import demo
from uplift_diffusion.cli import main


def test_sample_photos_ship_with_scikit_image():
    for name in demo.SAMPLE_PHOTOS:  # no pooch download: these files are inside the wheel
        photo = demo.sample_photo(name, multiple=32)
        assert photo.mode == "RGB" and photo.width % 32 == 0 and photo.height % 32 == 0 and min(photo.size) >= 256


@pytest.mark.slow
def test_demo_writes_its_figure_and_metrics(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--photos", "chelsea"]) == 0
    figure = Image.open(tmp_path / "demo.png")
    photo = demo.sample_photo("chelsea", multiple=32)  # 448x288
    # one row: four photo-sized cells side by side under a caption strip
    assert figure.size == (4 * photo.width + 3 * demo.GAP, photo.height + demo.LABEL_HEIGHT)
    results = json.loads((tmp_path / "results.json").read_text())
    metrics = results["photos"]["chelsea"]
    assert results["scale"] == 4 and metrics["size"] == [448, 288]
    for method in ("bicubic", "uplift"):
        assert 15 < metrics[method]["psnr"] < 45 and 0.3 < metrics[method]["ssim"] <= 1
    out = capsys.readouterr().out
    assert "chelsea" in out and f"{metrics['uplift']['psnr']:.2f} dB" in out and "demo.png" in out


def test_demo_rejects_unknown_photos(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--photos", "kodim01"]) == 2
    assert "unknown demo photo" in capsys.readouterr().err
    assert not (tmp_path / "demo.png").exists()
