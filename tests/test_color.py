"""ColorCorrection (paper B.1) on its own and inside the pipelines."""

import pytest
import torch
from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline

from uplift_diffusion import ColorCorrection, UPLiFTModel


def test_removes_an_injected_colour_shift_unit_range():
    torch.manual_seed(0)
    low = torch.rand(3, 3, 16, 16) * 0.6 + 0.2
    high = torch.nn.functional.interpolate(low, scale_factor=4, mode="bilinear")
    shift = torch.tensor([0.1, -0.05, 0.08])[None, :, None, None] * torch.tensor([1.0, -1.0, 0.5])[:, None, None, None]
    corrected = ColorCorrection()(high + shift, low)
    torch.testing.assert_close(corrected, high, atol=1e-5, rtol=0)
    torch.testing.assert_close(corrected.mean(dim=(2, 3)), low.mean(dim=(2, 3)), atol=1e-5, rtol=0)


def test_signed_range_and_clamp():
    torch.manual_seed(0)
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    high = low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) + 0.3
    torch.testing.assert_close(ColorCorrection()(high, low), high - 0.3, atol=1e-5, rtol=0)
    clamped = ColorCorrection(clamp=(0.0, 1.0))(torch.full((1, 3, 4, 4), 0.9), torch.full((1, 3, 2, 2), 1.5))
    assert clamped.max() <= 1.0


def test_disabled_and_shape_errors():
    x = torch.rand(1, 3, 8, 8)
    assert ColorCorrection(enabled=False)(x + 1, x).equal(x + 1)
    with pytest.raises(ValueError, match="same batch and channels"):
        ColorCorrection()(torch.rand(2, 3, 8, 8), torch.rand(1, 3, 4, 4))


def test_sr_pipeline_output_keeps_the_input_colour_means(shared_dir):
    from PIL import Image

    from uplift_diffusion import TAEF2

    image = Image.open(shared_dir / "data" / "kodak" / "kodim01.png").convert("RGB").crop((0, 0, 64, 48))
    torch.manual_seed(0)
    pipe = UPLiFTSuperResolutionPipeline(vae=TAEF2.from_pretrained(shared_dir / "weights" / "taef2"),
                                         upsampler=UPLiFTModel.from_preset("tiny-vae", in_channels=32).eval())
    pipe.set_progress_bar_config(disable=True)
    reference = torch.from_numpy(__import__("numpy").array(image)).permute(2, 0, 1).float().mean(dim=(1, 2)) / 255
    on = pipe(image, scale=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images[0]
    off = pipe(image, scale=2, output_type="pt", generator=torch.Generator().manual_seed(0),
               color_correction=False).images[0]
    error_on = (on.mean(dim=(1, 2)) - reference).abs().max()
    error_off = (off.mean(dim=(1, 2)) - reference).abs().max()
    assert error_on < 0.01 and error_on < error_off
