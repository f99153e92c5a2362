"""ColorCorrection (paper B.1) on its own and inside the pipelines."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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


def test_none_is_the_name_of_off():
    from uplift_diffusion.pipelines.common import color_correction_for

    x = torch.rand(1, 3, 8, 8)
    assert ColorCorrection(mode="none")(x + 1, x).equal(x + 1)
    assert not color_correction_for(None, "none").enabled and not color_correction_for(None, False).enabled
    with pytest.raises(ValueError, match="must be one of"):
        ColorCorrection(mode="off")


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


# ---------------------------------------------------------------- "detail" mode: low frequencies from the input
def test_detail_mode_takes_low_frequencies_from_the_input_and_detail_from_the_image():
    torch.manual_seed(0)
    reference = torch.rand(2, 3, 16, 16)
    bicubic = F.interpolate(reference, size=(64, 64), mode="bicubic", align_corners=False)
    cc = ColorCorrection(mode="detail", detail_sigma=0.5)
    flat = torch.full((2, 3, 64, 64), 0.8)  # washed out, no detail: the result is the bicubic input
    torch.testing.assert_close(cc(flat, reference), bicubic, atol=1e-5, rtol=0)
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 0.2 - 0.1  # finest detail, mean 0
    out = cc(flat + checker, reference)
    assert (out - bicubic - checker).abs().max() < 0.02  # passes through (the blur removes all but ~1 % of it)
    assert ColorCorrection(mode="detail", clamp=(0, 1))(flat + checker, reference).max() <= 1


def test_detail_mode_is_differentiable_and_validated():
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    ColorCorrection(mode="detail")(image, torch.rand(1, 3, 8, 8)).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mode"):
        ColorCorrection(mode="wavelet")
    with pytest.raises(ValueError, match="detail_sigma"):
        ColorCorrection(mode="detail", detail_sigma=0)


def test_pipeline_colour_mode_is_configured_saved_and_overridable(tmp_path):
    from uplift_diffusion import TAEF2

    torch.manual_seed(0)
    vae = TAEF2(latent_channels=4, channels=8, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1)).eval()
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=UPLiFTModel.from_preset("tiny-vae", noise_channels=0),
                                         color_correction_mode="detail")
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32)
    raw = pipe(image, scale=2, output_type="pt", color_correction=False).images
    detail = pipe(image, scale=2, output_type="pt").images
    torch.testing.assert_close(detail, ColorCorrection(mode="detail", clamp=(0, 1))(raw, image))
    mean = pipe(image, scale=2, output_type="pt", color_correction="mean").images
    torch.testing.assert_close(mean, ColorCorrection(clamp=(0, 1))(raw, image))
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = UPLiFTSuperResolutionPipeline.from_pretrained(tmp_path / "pipe")
    assert reloaded.config.color_correction_mode == "detail"
    with pytest.raises(ValueError, match="mode"):
        UPLiFTSuperResolutionPipeline(vae=vae, upsampler=pipe.upsampler, color_correction_mode="median")


def test_detail_strength_scales_the_detail_per_uplift_step_count():
    torch.manual_seed(0)
    reference = torch.rand(1, 3, 16, 16)
    image = {side: torch.rand(1, 3, side, side) for side in (32, 48, 64, 128)}

    def corrected(side, strength):
        return ColorCorrection(mode="detail", detail_strength=strength)(image[side], reference)

    def bicubic(side):
        return F.interpolate(reference, size=(side, side), mode="bicubic", align_corners=False)

    torch.testing.assert_close(corrected(64, 1.0), ColorCorrection(mode="detail")(image[64], reference))
    torch.testing.assert_close(corrected(64, 0), bicubic(64))
    half = corrected(64, 0.5)
    torch.testing.assert_close(half, bicubic(64) + 0.5 * (corrected(64, 1.0) - bicubic(64)), atol=1e-6, rtol=0)
    per_step = [0.9, 0.5, 0.0]  # 2x, 4x, 8x (chosen by output / reference width)
    torch.testing.assert_close(corrected(32, per_step), corrected(32, 0.9))
    torch.testing.assert_close(corrected(64, per_step), half)
    torch.testing.assert_close(corrected(48, per_step), corrected(48, 0.5))  # 3x runs UPLiFT to 4x: the 4x value
    torch.testing.assert_close(corrected(128, per_step), bicubic(128))
    torch.testing.assert_close(corrected(128, [0.9, 0.5]), corrected(128, 0.5))  # beyond the list: its last value
    for bad in (-0.1, 5, float("nan"), [], "0.5", [1.0, True]):
        with pytest.raises(ValueError, match="detail_strength"):
            ColorCorrection(mode="detail", detail_strength=bad)


def test_a_models_detail_strength_is_saved_with_it_and_applied_by_the_pipeline(tmp_path):
    from uplift_diffusion import TAEF2

    torch.manual_seed(0)
    vae = TAEF2(latent_channels=4, channels=8, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1)).eval()
    model = UPLiFTModel.from_preset("tiny-vae", noise_channels=0, color_correction="detail",
                                    detail_strength=[0.25, 0.75])
    model.save_pretrained(tmp_path / "model")
    reloaded = UPLiFTModel.from_pretrained(tmp_path / "model")
    assert list(reloaded.config.detail_strength) == [0.25, 0.75]
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=reloaded)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32)
    raw = pipe(image, scale=2, output_type="pt", color_correction=False).images
    out = pipe(image, scale=2, output_type="pt").images
    torch.testing.assert_close(out, ColorCorrection(mode="detail", clamp=(0, 1), detail_strength=0.25)(raw, image))
    with pytest.raises(ValueError, match="detail_strength"):
        UPLiFTModel.from_preset("tiny-vae", color_correction="detail", detail_strength=[2.0, -1.0])


def test_sharpness_tells_how_a_real_photo_was_downscaled(shared_dir):
    from PIL import Image

    from uplift_diffusion.color import sharpness
    from uplift_diffusion.training.data import downscale

    for name in ("kodim03.png", "kodim13.png", "kodim23.png"):
        photo = Image.open(shared_dir / "data" / "kodak" / name).convert("RGB")
        hr = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float() / 255
        size = (hr.shape[-2] // 4, hr.shape[-1] // 4)
        blurred, bicubic, aliased = (sharpness(downscale(hr, size, kernel)).item()
                                     for kernel in ("bilinear", "bicubic", "bilinear-aliased"))
        assert blurred < bicubic - 0.05 < aliased - 0.1, (name, blurred, bicubic, aliased)
        low = downscale(hr, size, "bicubic")
        assert sharpness(low * 0.5 + 0.2).item() == pytest.approx(bicubic, abs=1e-4)  # brightness, contrast
        assert sharpness(low * 2 - 1).item() == pytest.approx(bicubic, abs=1e-4)  # the [-1, 1] range
    assert sharpness(torch.full((1, 3, 16, 16), 0.5)).item() == 0  # flat
    assert sharpness(torch.rand(1, 3, 2, 16)).item() == 0  # too small to measure


def test_a_strength_curve_gives_each_image_the_strength_of_its_sharpness():
    from uplift_diffusion.color import check_detail_strength, sharpness

    torch.manual_seed(0)
    smooth = F.interpolate(torch.rand(1, 3, 4, 4), size=(16, 16), mode="bicubic", align_corners=False)
    noisy = torch.rand(1, 3, 16, 16)
    reference = torch.cat([smooth, noisy])
    low, high = sharpness(reference).tolist()
    assert low < 0 < high
    curve = [[low, 1.0], [high, 0.2]]  # the blurred input gets all the detail, the noisy one a fifth
    image = torch.rand(2, 3, 64, 64)
    out = ColorCorrection(mode="detail", detail_strength=[0.9, curve])(image, reference)
    for i, strength in enumerate((1.0, 0.2)):
        torch.testing.assert_close(out[i:i + 1], ColorCorrection(mode="detail", detail_strength=strength)(
            image[i:i + 1], reference[i:i + 1]))
    between = ColorCorrection(mode="detail", detail_strength=[[[low - 1, 0.0], [high + 1, 1.0]]])(image, reference)
    for i, sharp in enumerate((low, high)):  # linear between knots
        strength = (sharp - low + 1) / (high - low + 2)
        torch.testing.assert_close(between[i:i + 1], ColorCorrection(mode="detail", detail_strength=strength)(
            image[i:i + 1], reference[i:i + 1]))
    beyond = ColorCorrection(mode="detail", detail_strength=[[[high + 1, 0.3], [high + 2, 0.8]]])(image, reference)
    torch.testing.assert_close(beyond, ColorCorrection(mode="detail", detail_strength=0.3)(image, reference))
    assert check_detail_strength([0.5, [[0, 1], [1, 0.5]]]) == (0.5, ((0.0, 1.0), (1.0, 0.5)))
    for bad in ([[[1, 0.5], [0, 1]]], [[[0, 1], [0, 0.5]]], [[[0, 5]]], [[[0, 1, 2]]], [[[0, float("nan")]]],
                [[]], [[[True, 1]]], [["a", 1]]):
        with pytest.raises(ValueError, match="detail_strength"):
            ColorCorrection(mode="detail", detail_strength=bad)


def test_a_strength_curve_is_saved_with_the_model_and_applied_by_the_pipeline(tmp_path):
    from uplift_diffusion import TAEF2

    torch.manual_seed(0)
    vae = TAEF2(latent_channels=4, channels=8, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1)).eval()
    curve = [[-0.5, 1.0], [0.5, 0.1]]
    UPLiFTModel.from_preset("tiny-vae", noise_channels=0, color_correction="detail",
                            detail_strength=[curve]).save_pretrained(tmp_path / "model")
    reloaded = UPLiFTModel.from_pretrained(tmp_path / "model")
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=reloaded)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32)
    raw = pipe(image, scale=2, output_type="pt", color_correction=False).images
    out = pipe(image, scale=2, output_type="pt").images
    torch.testing.assert_close(out, ColorCorrection(mode="detail", clamp=(0, 1), detail_strength=[curve])(raw, image))
    assert not torch.allclose(out, ColorCorrection(mode="detail", clamp=(0, 1))(raw, image))


def test_the_strength_fit_takes_detail_from_sharp_inputs_only_where_no_protocol_loses():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fit_detail_strength.py"
    spec = importlib.util.spec_from_file_location("fit_detail_strength", path)
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    strengths = [0.0, 0.5, 1.0]

    def curves(best):  # PSNR over the strengths of 4 photos whose best strength is ``best``
        return [[10 - 4 * (s - best) ** 2 for s in strengths]] * 4

    def measured(aliased_sharpness):
        return {4: {"bicubic": {"psnr_per_photo": curves(1.0), "sharpness": [0.0, 0.05, -0.05, 0.02],
                                "names": list("abcd")},
                    "bilinear-antialiased": {"psnr_per_photo": curves(1.0), "sharpness": [-0.2, -0.15, -0.1, -0.2],
                                             "names": list("abcd")},
                    "bilinear-aliased": {"psnr_per_photo": curves(0.0), "sharpness": aliased_sharpness,
                                         "names": list("abcd")}}}

    far = measured([0.4, 0.5, 0.45, 0.6])  # the aliased inputs read well sharper than every other
    curve = fit.fit_curve(far, strengths, {4: 1.0}, robust_shift=0.1)[4]
    (t1, s1), (t2, s2) = curve
    assert s1 == 1.0 and s2 == 0.0 and 0.15 <= t1 < t2 <= 0.4  # clear of the bicubic inputs even 0.1 sharper
    for protocol, row in far[4].items():  # every protocol at its best strength: PSNR 10
        assert fit.curve_psnr(row, strengths, curve) == pytest.approx(10), protocol
    # aliased inputs hardly sharper than bicubic ones: any threshold between them fails the shifted check
    near = measured([0.06, 0.08, 0.07, 0.1])
    assert fit.fit_curve(near, strengths, {4: 1.0}, robust_shift=0.1)[4] == [[0.0, 1.0]]
    assert fit.fit_curve(near, strengths, {4: 1.0}, robust_shift=0.0)[4] != [[0.0, 1.0]]
