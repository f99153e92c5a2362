"""The model config fully describes the model (concrete defaults, never null; every preset rebuilds from its saved
config), and the public upscale_step checks its inputs like forward."""

import json

import pytest
import torch

from uplift_diffusion import PRESETS, UPLiFTModel
from uplift_diffusion.utils.errors import InputError


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_default_model_is_the_sd15_preset_with_a_concrete_config(tmp_path):
    model = UPLiFTModel()
    assert _count(model) == _count(UPLiFTModel.from_preset("sd15-vae")) == 53_487_445
    model.save_config(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert all(saved[k] is not None for k in ("encoder_blocks", "decoder_blocks", "refiner_blocks"))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_rebuilds_from_its_config(preset):
    model = UPLiFTModel.from_preset(preset)
    rebuilt = UPLiFTModel.from_config(model.config)
    assert _count(rebuilt) == _count(model)
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_upscale_step_refuses_what_forward_refuses():
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae").eval()
    image, features = torch.rand(1, 3, 32, 32), torch.randn(1, 4, 4, 4)
    encoded = model.encode_image(image)
    with torch.no_grad():
        out = model.upscale_step(features, encoded, generator=torch.Generator().manual_seed(0))
        assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
        with pytest.raises(InputError, match="NaN or inf"):
            model.upscale_step(features.masked_fill(torch.rand_like(features) < 0.1, float("nan")), encoded)
        with pytest.raises(InputError, match="channels"):
            model.upscale_step(torch.randn(1, 3, 4, 4), encoded)
        with pytest.raises(InputError, match="encode_image"):
            model.upscale_step(features, encoded[:1])
        with pytest.raises(InputError, match="generators for a batch of 1"):
            model.upscale_step(features, encoded, generator=[torch.Generator(), torch.Generator()])
