"""`uplift-diffusion upscale` and `generate` on good and bad inputs (in-process, offline)."""

import numpy as np
import pytest
import torch
from PIL import Image

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.cli import main


@pytest.fixture(scope="module")
def assets(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    UPLiFTModel.from_preset("tiny-vae", in_channels=32).save_pretrained(root / "upsampler")
    photo = Image.open(shared_dir / "data" / "kodak" / "kodim01.png").convert("RGB").crop((0, 0, 44, 36))
    (root / "in").mkdir()
    photo.save(root / "in" / "rgb.png")
    photo.convert("RGBA").save(root / "in" / "rgba.png")
    grey16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(root / "grey16.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root, ["--vae", str(shared_dir / "weights" / "taef2"), "--upsampler", str(root / "upsampler")]


def test_upscale_folder_and_file(assets, tmp_path, capsys):
    root, models = assets
    out = tmp_path / "out"
    assert main(["upscale", str(root / "in"), str(root / "grey16.png"), "-o", str(out), "--scale", "2", *models]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["grey16_x2.png", "rgb_x2.png", "rgba_x2.png"]
    for name in written:
        with Image.open(out / name) as image:
            assert image.size == (88, 72) and image.mode == "RGB"
    err = capsys.readouterr().err
    assert "converted RGBA to RGB" in err and "I;16" in err


def test_single_output_file_and_no_overwrite(assets, tmp_path, capsys):
    root, models = assets
    target = tmp_path / "big.png"
    args = ["upscale", str(root / "in" / "rgb.png"), "-o", str(target), "--scale", "4", *models]
    assert main(args) == 0 and Image.open(target).size == (176, 144)
    before = target.read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and target.read_bytes() == before
    assert main(args + ["--overwrite", "--tile-size", "32", "--tile-overlap", "8"]) == 0


@pytest.mark.parametrize("case,expected", [
    ("corrupt", "cannot read image"),
    ("size", "is smaller than"),
    ("missing", "input not found"),
    ("not_writable", "not writable"),
    ("offline_upsampler", "UPLiFT-upsampler/uplift_sd1.5vae"),
    ("offline_vae", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
])
def test_upscale_errors_are_one_line(assets, tmp_path, capsys, case, expected):
    root, models = assets
    good = str(root / "in" / "rgb.png")
    args = {
        "corrupt": [str(root / "corrupt.png"), "-o", str(tmp_path), *models],
        "size": [good, "-o", str(tmp_path), "--size", "40x40", *models],
        "missing": [str(root / "nope.png"), "-o", str(tmp_path), *models],
        "not_writable": [good, "-o", str(root / "in" / "rgb.png" / "sub"), *models],
        "offline_upsampler": [good, "-o", str(tmp_path), "--pair", "sd15", models[0], models[1]],
        "offline_vae": [good, "-o", str(tmp_path), "--pair", "sd15", models[2], models[3]],
    }[case]
    assert main(["upscale", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("uplift-diffusion upscale: error:") and expected in err[0]
    if case.startswith("offline"):
        assert "local" in err[0]
    if case == "not_writable":  # names the file in the way, not the OS's "File exists"
        assert "rgb.png is a file" in err[0] and "File exists" not in err[0]
    assert not list(tmp_path.glob("*.png"))


def test_generate_with_a_local_pipeline(tmp_path, capsys):
    from tiny_sd import build_pipeline

    build_pipeline(tmp_path / "model")
    out = tmp_path / "gen.png"
    args = ["generate", "a cat", "-o", str(out), "--model", str(tmp_path / "model" / "pipeline"), "--steps", "2",
            "--upscale", "2", "--save-low-res"]
    assert main(args) == 0
    assert Image.open(out).size == (128, 128) and Image.open(tmp_path / "gen_lowres.png").size == (64, 64)
    capsys.readouterr()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["generate", "a cat", "-o", str(tmp_path / "x.png"), "--model", str(tmp_path / "nothing")]) == 2
    assert main(["generate", "a cat", "-o", str(tmp_path / "x.txt")]) == 2


def test_compile_flag_gives_the_same_picture(assets, tmp_path):
    root, models = assets
    args = ["upscale", str(root / "in" / "rgb.png"), "--scale", "2", *models]
    assert main([*args, "-o", str(tmp_path / "eager.png")]) == 0
    assert main([*args, "-o", str(tmp_path / "compiled.png"), "--compile"]) == 0
    eager, compiled = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=np.int16) for n in ("eager", "compiled"))
    assert np.abs(eager - compiled).max() <= 1  # float rounding of the compiled kernels, at most one grey level
