"""The latent space an upsampler was trained for: recorded in its config (channels, scaling / shift factors, the
VAE's name and fingerprint), carried by the built-in pair and the published checkpoint's preset, and checked when the
upsampler meets another VAE: another channel count is refused in one line naming both, the same channels with
another VAE warn once, naming both. Through Python and the command line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_flux2 import build_vae as build_flux2_vae
from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline, common

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.backbones.vae import latent_space_record, vae_fingerprint
from uplift_diffusion.builtin import builtin_upsampler_path, load_builtin_upsampler, load_builtin_vae
from uplift_diffusion.cli import main
from uplift_diffusion.presets import SD15_LATENT_SPACE, get_preset
from uplift_diffusion.utils.errors import InputError

SD15_VAE_CONFIG = dict(latent_channels=4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                       down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                       norm_num_groups=32, act_fn="silu", in_channels=3, out_channels=3, sample_size=512)


def tiny_kl_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), latent_channels=latent_channels, norm_num_groups=4,
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4).eval()


@pytest.fixture
def warnings_seen(monkeypatch):
    """The latent-space warnings, from a fresh 'warned once' memory."""
    seen = []
    monkeypatch.setattr(common, "_WARNED_LATENT_SPACES", set())
    monkeypatch.setattr(common.logger, "warning", lambda message, *args: seen.append(message))
    return seen


def test_the_records_of_the_builtin_pair_and_the_published_checkpoint():
    builtin = load_builtin_upsampler("taef2")
    record = builtin.config.latent_space
    assert record == json.loads((builtin_upsampler_path("taef2") / "config.json").read_text())["latent_space"]
    assert record["latent_channels"] == 32 and record["fingerprint"] == vae_fingerprint(load_builtin_vae("taef2"))
    assert vae_fingerprint(build_flux2_vae()) == "flux2"  # FLUX.2's own VAE: the same latent space as taef2
    from diffusers import AutoencoderKL

    with torch.device("meta"):  # the SD 1.5 VAE's architecture, without its 84M weights
        sd15 = AutoencoderKL(**SD15_VAE_CONFIG)
    assert get_preset("sd15-vae").config["latent_space"] == SD15_LATENT_SPACE
    assert SD15_LATENT_SPACE == {**latent_space_record(sd15), "vae": SD15_LATENT_SPACE["vae"]}
    assert UPLiFTModel.from_preset("sd15-vae", in_channels=32).config.latent_space is None  # other latents: no record
    with pytest.raises(InputError, match="latent_space records 4 latent channels but in_channels is 32"):
        UPLiFTModel.from_preset("tiny-vae", in_channels=32, latent_space=SD15_LATENT_SPACE)


def test_a_saved_record_loads_back(tmp_path):
    model = UPLiFTModel.from_preset("tiny-vae", latent_space=latent_space_record(tiny_kl_vae(), "tiny"))
    model.save_pretrained(tmp_path)
    assert UPLiFTModel.from_pretrained(tmp_path).config.latent_space == model.config.latent_space


def test_another_channel_count_is_refused_naming_both(warnings_seen):
    with pytest.raises(InputError) as err:
        UPLiFTSuperResolutionPipeline(vae=tiny_kl_vae(), upsampler=load_builtin_upsampler("taef2"))
    message = str(err.value)
    assert "\n" not in message and "taef2" in message and "32 latent channels" in message
    assert "AutoencoderKL" in message and "4 latent channels" in message


def test_the_same_channels_with_another_vae_warn_once_naming_both(warnings_seen):
    upsampler = UPLiFTModel.from_preset("tiny-vae", latent_space=SD15_LATENT_SPACE).eval()
    vae = tiny_kl_vae()
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=upsampler)
    pipe.set_progress_bar_config(disable=True)
    pipe(torch.rand(1, 3, 16, 16), scale=2, output_type="np")
    UPLiFTSuperResolutionPipeline(vae=vae, upsampler=upsampler)
    assert len(warnings_seen) == 1
    assert "stable-diffusion-v1-5" in warnings_seen[0] and "AutoencoderKL" in warnings_seen[0]
    assert vae_fingerprint(vae) in warnings_seen[0] and SD15_LATENT_SPACE["fingerprint"] in warnings_seen[0]


def test_the_matching_vae_is_quiet(warnings_seen):
    UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    from uplift_diffusion.pipelines import UPLiFTFlux2KleinPipeline

    UPLiFTFlux2KleinPipeline(scheduler=None, vae=build_flux2_vae(), text_encoder=None, tokenizer=None,
                             transformer=None, upsampler=load_builtin_upsampler("taef2"),
                             guide_vae=load_builtin_vae("taef2"))
    assert warnings_seen == []


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_cli_refuses_another_channel_count_in_one_line(tmp_path, photo, capsys):
    tiny_kl_vae(4).save_pretrained(tmp_path / "sd_vae")
    assert main(["upscale", str(photo), "-o", str(tmp_path / "out.png"), "--vae", str(tmp_path / "sd_vae")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "taef2" in err and "AutoencoderKL" in err and "4 latent channels" in err


def test_cli_warns_for_the_same_channels_with_another_vae(tmp_path, photo, warnings_seen):
    tiny_kl_vae(32).save_pretrained(tmp_path / "other_vae")
    assert main(["upscale", str(photo), "-o", str(tmp_path / "out.png"), "--scale", "2",
                 "--vae", str(tmp_path / "other_vae")]) == 0
    assert len(warnings_seen) == 1 and "taef2" in warnings_seen[0] and "other_vae" in warnings_seen[0]
