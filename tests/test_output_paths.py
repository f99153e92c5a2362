"""Outputs never land on inputs: an output path that is an input (the same file, a symlink or a hard link to it) is
refused with or without --overwrite, and an output folder that is an input folder (or inside it) is refused, since the
outputs would be read as inputs on the next run. Through the doors users use: upscale, eval sr, features."""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.cli import main
from uplift_diffusion.utils.errors import InputError
from uplift_diffusion.utils.io import refuse_outputs_onto_inputs


@pytest.fixture(scope="module")
def assets(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("outputs")
    torch.manual_seed(0)
    UPLiFTModel.from_preset("tiny-vae", in_channels=32, noise_channels=0).save_pretrained(root / "upsampler")
    photo = Image.open(shared_dir / "data" / "kodak" / "kodim01.png").convert("RGB").crop((0, 0, 48, 40))
    return root, photo, ["--vae", str(shared_dir / "weights" / "taef2"), "--upsampler", str(root / "upsampler")]


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_upscale_never_writes_onto_its_input(assets, tmp_path, capsys, link, overwrite):
    _, photo, models = assets
    mine = tmp_path / "mine.png"
    photo.save(mine)
    before = mine.read_bytes()
    target = {"same": mine, "symlink": tmp_path / "alias.png", "hardlink": tmp_path / "twin.png"}[link]
    if link == "symlink":
        target.symlink_to(mine)
    elif link == "hardlink":
        os.link(mine, target)
    code = main(["upscale", str(mine), "-o", str(target), "--scale", "2", *models]
                + (["--overwrite"] if overwrite else []))
    assert code == 2
    err = capsys.readouterr().err
    assert "is an input" in err and err.count("\n") == 1
    assert mine.read_bytes() == before


def test_upscale_output_folder_that_is_the_input_folder_is_refused(assets, tmp_path, capsys):
    _, photo, models = assets
    photo.save(tmp_path / "a.png")
    for inputs in ([str(tmp_path)], [str(tmp_path / "*.png")]):
        assert main(["upscale", *inputs, "-o", str(tmp_path), "--scale", "2", *models]) == 2
        err = capsys.readouterr().err
        assert "input folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    # a folder inside it is fine: upscale lists a folder's own files only, never its sub-folders
    assert main(["upscale", str(tmp_path), "-o", str(tmp_path / "up"), "--scale", "2", *models]) == 0
    assert (tmp_path / "up" / "a_x2.png").is_file()


def test_eval_sr_output_folder_inside_its_images_is_refused(assets, tmp_path, capsys):
    _, photo, models = assets
    photo.save(tmp_path / "a.png")
    code = main(["eval", "sr", "--images", str(tmp_path), "--output", str(tmp_path / "results"), "--size", "32",
                 "--scale", "2", "--fid-backend", "none", *models])
    assert code == 2
    assert "input folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.parametrize("flag", ["--pca", "--save"])
def test_features_never_writes_onto_its_image(tmp_path, capsys, flag):
    image = tmp_path / ("photo.png" if flag == "--pca" else "photo.safetensors")
    Image.new("RGB", (32, 32), (10, 20, 30)).save(image, format="PNG")
    before = image.read_bytes()
    assert main(["features", str(image), flag, str(image), "--overwrite"]) == 2
    assert "is an input" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_the_helper_compares_files_not_spellings(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "b.png")
    with pytest.raises(InputError, match="is an input"):
        refuse_outputs_onto_inputs([tmp_path / "." / "b.png"], [a])
    refuse_outputs_onto_inputs([tmp_path / "c.png"], [a])  # a new file: fine
