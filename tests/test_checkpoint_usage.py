"""A checkpoint says how it must be used: the colour correction an upsampler was trained with lives in its config,
survives save / load, and every pipeline built with it applies it unless the caller overrides it explicitly."""

from __future__ import annotations

import pytest
import torch
from uplift_diffusion.pipelines.common import color_correction_for

from uplift_diffusion import TAEF2, ColorCorrection, UPLiFTModel, UPLiFTSuperResolutionPipeline
from uplift_diffusion.builtin import builtin_upsampler_path


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return TAEF2(latent_channels=4, channels=8, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1)).eval()


def _upsampler(**usage) -> UPLiFTModel:
    torch.manual_seed(1)
    return UPLiFTModel.from_preset("tiny-vae", noise_channels=0, **usage).eval()


def test_default_is_the_papers_mean_correction():
    assert _upsampler().config.color_correction == "mean"


def test_usage_survives_save_and_load(tmp_path):
    _upsampler(color_correction="detail", detail_sigma=0.75).save_pretrained(tmp_path / "m")
    loaded = UPLiFTModel.from_pretrained(tmp_path / "m")
    assert (loaded.config.color_correction, loaded.config.detail_sigma) == ("detail", 0.75)


def test_invalid_usage_is_refused():
    with pytest.raises(ValueError, match="colour correction mode"):
        _upsampler(color_correction="median")


def test_builtin_checkpoint_records_detail():
    loaded = UPLiFTModel.from_pretrained(builtin_upsampler_path("taef2"))
    assert loaded.config.color_correction == "detail"


@pytest.mark.parametrize("mode", ["mean", "detail"])
def test_pipeline_built_by_hand_uses_the_upsamplers_correction(tiny_vae, mode):
    """The entry points build the pipeline from (vae, upsampler) with no colour argument: the checkpoint decides."""
    pipe = UPLiFTSuperResolutionPipeline(vae=tiny_vae, upsampler=_upsampler(color_correction=mode, detail_sigma=0.7))
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    raw = pipe(image, scale=2, output_type="pt", color_correction=False).images
    got = pipe(image, scale=2, output_type="pt").images
    want = ColorCorrection(mode=mode, clamp=(0, 1), detail_sigma=0.7)(raw, image)
    torch.testing.assert_close(got, want)
    other = "mean" if mode == "detail" else "detail"
    assert not torch.allclose(got, ColorCorrection(mode=other, clamp=(0, 1), detail_sigma=0.7)(raw, image))


def test_explicit_override_wins(tiny_vae):
    upsampler = _upsampler(color_correction="detail")
    assert color_correction_for(upsampler).mode == "detail"
    assert color_correction_for(upsampler, "mean").mode == "mean"
    assert color_correction_for(upsampler, True, mode="mean").mode == "mean"
    assert not color_correction_for(upsampler, False).enabled
    pipe = UPLiFTSuperResolutionPipeline(vae=tiny_vae, upsampler=upsampler, color_correction_mode="mean")
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    raw = pipe(image, scale=2, output_type="pt", color_correction=False).images
    torch.testing.assert_close(pipe(image, scale=2, output_type="pt").images,
                               ColorCorrection(mode="mean", clamp=(0, 1))(raw, image))


def test_saved_pipeline_keeps_the_upsamplers_correction(tiny_vae, tmp_path):
    pipe = UPLiFTSuperResolutionPipeline(vae=tiny_vae, upsampler=_upsampler(color_correction="detail"))
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = UPLiFTSuperResolutionPipeline.from_pretrained(tmp_path / "pipe")
    assert reloaded.config.color_correction_mode is None
    assert color_correction_for(reloaded.upsampler, True, reloaded.config.color_correction_mode).mode == "detail"


def test_training_export_records_the_loss_correction():
    from uplift_diffusion.training.config import TrainConfig
    from uplift_diffusion.training.trainer import build_model

    config = TrainConfig.from_file("configs/taef2_builtin.json")
    model = build_model(config)
    assert model.config.color_correction == config.loss.pixel_color_correction == "detail"
    assert model.config.detail_sigma == config.loss.detail_sigma
