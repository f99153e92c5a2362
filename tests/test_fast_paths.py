"""Inference fast paths: the channels-last CPU path equals the reference sequence of operations; bf16 within its
stated tolerance; outputs keep the usual layout."""

import pytest
import torch
import torch.nn.functional as F

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.blocks import Conv2d, ConvBlock, channels_last_inference, concat_channels, nearest_resize

# The channels-last path changes only the summation order of the convs and norms (float rounding).
EXACT = dict(rtol=1e-5, atol=1e-5)
# Stated tolerance of the opt-in bfloat16 path (8-bit mantissa): max error / max |output| of a whole model.
BF16_RELATIVE = 5e-2


def _randomise_batch_norms(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()


def _relative(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_fast_path_applies_only_to_cpu_inference():
    x = torch.randn(1, 4, 8, 8)
    assert not channels_last_inference(x)  # autograd on: the reference sequence of operations
    with torch.no_grad():
        assert channels_last_inference(x) and channels_last_inference(x.bfloat16())
        assert not channels_last_inference(x.half())


@pytest.mark.parametrize("norm_type", ["batch", "layer"])
@pytest.mark.parametrize("c_in, c_out, num_convs", [(3, 16, 1), (24, 8, 2), (8, 24, 1), (16, 16, 2)])
def test_conv_block_channels_last_matches_reference(norm_type, c_in, c_out, num_convs):
    torch.manual_seed(0)
    block = ConvBlock(c_in, c_out, num_convs, norm_type).eval()
    with torch.no_grad():
        _randomise_batch_norms(block)
    x = torch.randn(2, c_in, 12, 10)
    reference = block(x)  # autograd on: the published sequence (contiguous layout, no folding)
    with torch.no_grad():
        fast = block(x)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, reference.detach(), **EXACT)


def test_pointwise_conv_and_concat_match_torch():
    torch.manual_seed(0)
    conv = Conv2d(12, 5, kernel_size=1)
    x = torch.randn(1, 12, 9, 7).contiguous(memory_format=torch.channels_last)
    parts = [torch.randn(1, 3, 9, 7), x[:, :4], torch.randn(1, 2, 9, 7)]
    with torch.no_grad():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias), **EXACT)
        joined = concat_channels(parts)
    assert joined.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(joined, torch.cat(parts, dim=1))


@pytest.mark.parametrize("size", [(4, 4), (2, 8), (16, 16), (5, 5), (3, 7)])
def test_nearest_resize_equals_interpolate(size):
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(nearest_resize(x, size), F.interpolate(x, size=size, mode="nearest"))


@pytest.mark.parametrize("preset, overrides", [
    ("tiny-vae", {}),
    ("tiny-vae", {"norm_type": "batch", "noise_channels": 0, "refiner_blocks": None, "in_channels": 24,
                  "patch_size": 14, "image_normalization": "imagenet"}),
])
def test_model_inference_path_matches_autograd_path(preset, overrides):
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset(preset, **overrides).eval()
    with torch.no_grad():
        _randomise_batch_norms(model)
    p, c = model.config.patch_size, model.config.in_channels
    image, features = torch.rand(1, 3, 4 * p, 4 * p), torch.randn(1, c, 4, 4)
    kwargs = dict(iterations=2, output_size=(30, 26), generator=torch.Generator().manual_seed(3))
    reference = model(image, features, **kwargs).detach()
    kwargs["generator"] = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        fast = model(image, features, **kwargs)
        step = model.upscale_step(features, model.encode_image(image))
    assert fast.is_contiguous() and step.is_contiguous()  # callers may .view() the outputs
    torch.testing.assert_close(fast, reference, **EXACT)


def test_bfloat16_path_within_stated_tolerance():
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae", noise_channels=0).eval()
    image, features = torch.rand(1, 3, 32, 32), torch.randn(1, 4, 4, 4)
    with torch.inference_mode():
        exact = model(image, features, iterations=2)
        fast = model.to(torch.bfloat16)(image.bfloat16(), features.bfloat16(), iterations=2)
    assert fast.dtype == torch.bfloat16
    assert _relative(fast, exact) < BF16_RELATIVE
