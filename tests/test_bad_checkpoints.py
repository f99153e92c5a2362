"""Damaged, truncated or wrong-layout weights are refused when they load, in one line naming the file:
NaN / inf weights (the file and the tensor), a truncated ``save_pretrained`` folder, a folder's weights file passed as
a file, a file that is not a checkpoint, and a damaged install of the built-in weights ("reinstall the package")."""

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from uplift_diffusion import UPLiFTModel, builtin
from uplift_diffusion.cli import main
from uplift_diffusion.reference import to_reference_state_dict
from uplift_diffusion.utils.errors import CheckpointError, UserError

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _copy_builtin(tmp_path, name="uplift-taef2"):
    folder = tmp_path / name
    shutil.copytree(builtin.weights_folder(name), folder)
    return folder


def _overwrite_middle(file, data=b"\xff" * 4000):
    """Bytes in the middle of the tensor data replaced (the header stays valid): 0xFF x 4 is a float32 NaN."""
    size = os.path.getsize(file)
    with open(file, "r+b") as f:
        f.seek(size // 2)
        f.write(data)


def _finite_garbage(file):
    """Finite but wrong weights (0.5 as float32), the header intact: no NaN check can see it, the digest does."""
    _overwrite_middle(file, np.full(1000, 0.5, np.float32).tobytes())


def _truncate(file):
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _upscale_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("uplift-diffusion upscale: error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


def test_one_checkpoint_error_and_it_is_a_user_error():
    from uplift_diffusion import reference
    from uplift_diffusion.training import checkpoints

    assert reference.CheckpointError is checkpoints.CheckpointError is CheckpointError
    assert issubclass(CheckpointError, (UserError, ValueError))


def test_non_finite_weights_are_refused_at_load_naming_file_and_tensor(tmp_path, image, capsys):
    folder = _copy_builtin(tmp_path)
    _overwrite_middle(folder / WEIGHTS)
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS}.*tensor decoder\.\S+ holds \d+ NaN / inf"):
        UPLiFTModel.from_pretrained(folder)

    out = tmp_path / "out.png"
    err = _upscale_error(capsys, ["upscale", str(image), "-o", str(out), "--upsampler", str(folder)])
    assert WEIGHTS in err and "NaN / inf" in err and "damaged" in err
    assert not out.exists()


def test_non_finite_weights_in_a_reference_checkpoint(tmp_path):
    torch.manual_seed(0)
    state = to_reference_state_dict(UPLiFTModel.from_preset("sd15-vae"))
    name = sorted(state)[3]
    state[name] = state[name].clone().fill_(float("inf"))
    save_file(state, str(tmp_path / "uplift_sd1.5vae.safetensors"))
    with pytest.raises(CheckpointError, match=rf"uplift_sd1.5vae.safetensors: tensor {name} holds"):
        UPLiFTModel.from_reference_checkpoint(tmp_path / "uplift_sd1.5vae.safetensors")


def test_truncated_folder_wrong_file_and_garbage_are_one_line(tmp_path, image, capsys):
    folder = _copy_builtin(tmp_path)
    _truncate(folder / WEIGHTS)
    out = str(tmp_path / "out.png")
    err = _upscale_error(capsys, ["upscale", str(image), "-o", out, "--upsampler", str(folder)])
    assert str(folder) in err and "truncated" in err

    whole = _copy_builtin(tmp_path / "whole")
    err = _upscale_error(capsys, ["upscale", str(image), "-o", out, "--upsampler", str(whole / WEIGHTS)])
    assert "pass the folder" in err and "preset=" not in err

    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    err = _upscale_error(capsys, ["upscale", str(image), "-o", out, "--upsampler", str(garbage)])
    assert "bad.safetensors" in err and "corrupt" in err

    # a checkpoint of no published layout: the advice is in the command's words, not Python's
    torch.manual_seed(0)
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    err = _upscale_error(capsys, ["upscale", str(image), "-o", out, "--upsampler", str(tmp_path / "other.safetensors")])
    assert "--upsampler" in err and "preset=" not in err


@pytest.mark.parametrize("part, file", [("uplift-taef2", WEIGHTS), ("taef2", "taef2.safetensors")])
@pytest.mark.parametrize("damage", [_overwrite_middle, _truncate, _finite_garbage])
def test_a_damaged_builtin_install_says_reinstall(tmp_path, image, capsys, monkeypatch, damage, part, file):
    folders = {name: _copy_builtin(tmp_path, name) for name in ("uplift-taef2", "taef2")}
    damage(folders[part] / file)
    monkeypatch.setattr(builtin, "weights_folder", lambda name: folders[name])
    with pytest.raises(CheckpointError, match="reinstall the package"):
        (builtin.load_builtin_upsampler if part == "uplift-taef2" else builtin.load_builtin_vae)("taef2")
    err = _upscale_error(capsys, ["upscale", str(image), "-o", str(tmp_path / "out.png")])
    assert "built-in" in err and "reinstall the package" in err


def test_a_damaged_local_vae_is_one_line(tmp_path, image, capsys, shared_dir):
    """A truncated taef2_encoder.pth and a truncated diffusers VAE folder (a partial download) name the folder."""
    from diffusers import AutoencoderTiny

    pth = tmp_path / "taef2"
    shutil.copytree(shared_dir / "weights" / "taef2", pth)
    _truncate(pth / "taef2_encoder.pth")
    AutoencoderTiny(latent_channels=4, encoder_block_out_channels=(8,) * 4,
                    decoder_block_out_channels=(8,) * 4).save_pretrained(tmp_path / "tiny")
    _truncate(tmp_path / "tiny" / WEIGHTS)
    for folder in (pth, tmp_path / "tiny"):
        err = _upscale_error(capsys, ["upscale", str(image), "-o", str(tmp_path / "out.png"), "--vae", str(folder),
                                      "--upsampler", str(shared_dir / "weights" / "taef2"), "--scale", "2"])
        assert f"--vae {folder}" in err and "damaged or incomplete" in err


def test_a_training_config_with_a_missing_backbone_path_is_one_line(tmp_path, capsys):
    import json

    config = tmp_path / "train.json"
    config.write_text(json.dumps({"max_steps": 1, "backbone": {"type": "taef2", "path": str(tmp_path / "nowhere")},
                                  "output_dir": str(tmp_path / "run")}))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "backbone.path" in err and "nowhere" in err and str(config) in err
