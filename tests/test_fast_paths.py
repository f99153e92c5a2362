"""Inference fast paths: the channels-last CPU path equals the reference sequence of operations; bf16 within its
stated tolerance; outputs keep the usual layout."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from fast_path_helpers import BF16_RELATIVE, EXACT, randomise_batch_norms, relative_error

from uplift_diffusion import UPLiFTModel, fast_paths
from uplift_diffusion.blocks import Conv2d, ConvBlock, channels_last_inference, concat_channels, nearest_resize
from uplift_diffusion.utils.errors import InputError


def test_fast_path_applies_only_to_cpu_inference():
    x = torch.randn(1, 4, 8, 8)
    assert not channels_last_inference(x)  # autograd on: the reference sequence of operations
    with torch.no_grad():
        assert channels_last_inference(x) == fast_paths.capabilities().onednn
        # bf16 on oneDNN only where this CPU runs it natively (elsewhere the plain path: tests/test_cpu_backend.py)
        assert channels_last_inference(x.bfloat16()) == fast_paths.capabilities().onednn_bf16
        assert not channels_last_inference(x.half())
        with fast_paths.fast_paths(False):
            assert not channels_last_inference(x)


@pytest.mark.parametrize("norm_type", ["batch", "layer"])
@pytest.mark.parametrize("c_in, c_out, num_convs", [(3, 16, 1), (24, 8, 2), (8, 24, 1), (16, 16, 2)])
def test_conv_block_channels_last_matches_reference(norm_type, c_in, c_out, num_convs):
    torch.manual_seed(0)
    block = ConvBlock(c_in, c_out, num_convs, norm_type).eval()
    with torch.no_grad():
        randomise_batch_norms(block)
    x = torch.randn(2, c_in, 12, 10)
    reference = block(x)  # autograd on: the published sequence (contiguous layout, no folding)
    with torch.no_grad():
        fast = block(x)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, reference.detach(), **EXACT)


def test_pointwise_conv_and_concat_match_torch():
    torch.manual_seed(0)
    conv = Conv2d(12, 5, kernel_size=1)
    x = torch.randn(2, 12, 9, 7).contiguous(memory_format=torch.channels_last)
    parts = [torch.randn(2, 3, 9, 7), x[:, :4], torch.randn(2, 2, 9, 7), torch.randn(2, 1, 9, 7)]
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
        randomise_batch_norms(model)
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


@pytest.fixture
def noiseless_tiny():
    """A noise-free tiny-vae model in eval mode, an image and its 4x4 latents."""
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae", noise_channels=0).eval()
    return model, torch.rand(1, 3, 32, 32), torch.randn(1, 4, 4, 4)


def test_bfloat16_path_within_stated_tolerance(noiseless_tiny):
    model, image, features = noiseless_tiny
    with torch.inference_mode():
        exact = model(image, features, iterations=2)
        fast = model.to(torch.bfloat16)(image.bfloat16(), features.bfloat16(), iterations=2)
    assert fast.dtype == torch.bfloat16
    assert relative_error(fast, exact) < BF16_RELATIVE


# --- computing only what the output needs (exact: same values up to float rounding) -------------------------------


@pytest.mark.parametrize("norm_type", ["batch", "layer"])
def test_strided_conv_block_equals_subsampled_block(norm_type):
    torch.manual_seed(0)
    block = ConvBlock(6, 10, 1, norm_type).eval()
    with torch.no_grad():
        randomise_batch_norms(block)
    x = torch.randn(2, 6, 16, 12)
    for grad in (True, False):  # the reference sequence and the channels-last path
        with torch.set_grad_enabled(grad):
            full, strided = block(x)[..., ::4, ::4], block(x, stride=4)
        torch.testing.assert_close(strided, full, **EXACT)
    with pytest.raises(ValueError, match="num_convs=1"):
        ConvBlock(6, 10, 2, norm_type).eval()(x, stride=2)  # a second 3x3 conv reads the skipped pixels
    with pytest.raises(ValueError, match="training"):
        ConvBlock(6, 10, 1, norm_type).train()(x, stride=2)  # batch statistics over every pixel


@pytest.mark.parametrize("norm_type", ["batch", "layer"])
@pytest.mark.parametrize("stride", [4, 8])
def test_packed_block_pair_equals_subsampled_pair(norm_type, stride):
    from uplift_diffusion.blocks import BlockGroup

    torch.manual_seed(0)
    group = BlockGroup(6, 10, 3, 1, norm_type).eval()
    with torch.no_grad():
        randomise_batch_norms(group)
    x = torch.randn(2, 6, 3 * stride, 2 * stride)
    assert group.blocks[-2].can_pack(x, stride) and not group.blocks[-2].can_pack(x, 2)
    for grad in (True, False):  # the reference sequence and the channels-last path
        with torch.set_grad_enabled(grad):
            full, packed = group(x)[..., ::stride, ::stride], group(x, last_stride=stride)
        torch.testing.assert_close(packed, full, **EXACT)
    with torch.no_grad():
        packed_map = group.blocks[-2].forward_packed(group.blocks[0](x), stride)
    assert packed_map.shape[-2:] == (9, 6)
    assert not packed_map[:, :, 0].any() and not packed_map[:, :, :, 0].any()  # row / column -1: the zero padding
    with pytest.raises(ValueError, match="num_convs=1"):
        ConvBlock(10, 10, 2, norm_type).eval().forward_from_packed(packed_map)


@pytest.mark.parametrize("preset, tokens, iterations, stride", [
    ("dinov2-s14", 4, 4, 2),  # no refiner: the last step reads the deepest map at half resolution
    ("tiny-vae", 8, 1, 4),  # refiner: read at the step's output size, 16x16 of the 64x64 image
    ("tiny-vae", 4, 4, 1),  # a step reads it beyond the image's resolution: nothing to skip
    ("tiny-vae-deep", 8, 1, 4),  # two blocks in the deepest group (as sd15-vae): the first one packed
])
def test_encoder_computes_only_what_the_steps_read(preset, tokens, iterations, stride):
    torch.manual_seed(0)
    if preset == "tiny-vae-deep":
        widths = (8, 8, 16, 16, 16)
        model = UPLiFTModel.from_preset("tiny-vae", encoder_blocks=[
            {"out_channels": c, "num_blocks": 2, "num_convs": 1} for c in widths]).eval()
    else:
        model = UPLiFTModel.from_preset(preset).eval()
    p, c = model.config.patch_size, model.config.in_channels
    image = model.normalize_image(torch.rand(1, 3, p * tokens, p * tokens))
    features = torch.randn(1, c, tokens, tokens)
    with torch.inference_mode():
        full, reduced = model.encode_image(image), model.encode_image(image, iterations)
        assert full[-1].shape[-1] == stride * reduced[-1].shape[-1]
        torch.testing.assert_close(reduced[-1], full[-1][..., ::stride, ::stride], **EXACT)
        x_full = x_reduced = features
        for _ in range(iterations):
            x_full = model.upscale_step(x_full, full, torch.Generator().manual_seed(1))
            x_reduced = model.upscale_step(x_reduced, reduced, torch.Generator().manual_seed(1))
        torch.testing.assert_close(x_reduced, x_full, **EXACT)


def test_steps_refuse_an_encoding_made_for_fewer_steps():
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("dinov2-s14").eval()
    image, features = torch.rand(1, 3, 56, 56), torch.randn(1, 384, 4, 4)
    with torch.inference_mode():
        encoded = model.encode_image(image, iterations=2)  # deepest map at 8x8: enough for steps on 4x4 and 8x8
        x = model.upscale_step(model.upscale_step(features, encoded), encoded)
        with pytest.raises(InputError, match="fewer steps"):
            model.upscale_step(x, encoded)  # a third step reads it at 16x16


def test_attender_resizes_inside_its_tiles_exactly():
    from uplift_diffusion.attender import NEIGHBOURHOODS, local_attend
    from uplift_diffusion.utils.image_ops import bilinear_resize
    from uplift_diffusion.utils.resize_matmul import bilinear_resize_fast

    torch.manual_seed(0)
    value, attention = torch.randn(2, 40, 16, 12), torch.softmax(torch.randn(2, 17, 32, 24), dim=1)
    with torch.inference_mode(), fast_paths.fast_paths(True):
        for dtype in (torch.float32, torch.bfloat16):
            a, v = attention.to(dtype), value.to(dtype)
            fused = local_attend(a, v, NEIGHBOURHOODS[17], output_size=(28, 21))
            assert fused.shape == (2, 40, 28, 21) and fused.dtype == dtype
            whole = local_attend(a, v, NEIGHBOURHOODS[17])
            # The tiles take the resize the fast paths use (float32: banded matrix products; bf16: torch's kernel)...
            assert torch.equal(fused, bilinear_resize_fast(whole, (28, 21)))
            # ...which is torch's antialiased resize up to float rounding.
            plain = bilinear_resize(whole, (28, 21))
            tolerance = 0 if dtype == torch.bfloat16 else 1e-6 * whole.abs().max().item()
            torch.testing.assert_close(fused, plain, rtol=0, atol=tolerance)


def test_folded_batch_norm_follows_weight_changes():
    torch.manual_seed(0)
    block = ConvBlock(4, 8, 1, "batch").eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        block(x)  # folds and caches
        randomise_batch_norms(block)  # in-place updates: new tensor versions
        torch.testing.assert_close(block(x), block.conv(x) + torch.cat([x, x.new_zeros(1, 4, 6, 6)], 1), **EXACT)
        before = block(x)
        block.to(torch.bfloat16).to(torch.float32)  # new storages, weights rounded to bf16
        rounded = block.conv(x) + torch.cat([x, x.new_zeros(1, 4, 6, 6)], 1)
        torch.testing.assert_close(block(x), rounded, **EXACT)
        assert not torch.equal(block(x), before)


@pytest.mark.skipif(not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")), reason="torch.compile needs a C++ "
                    "compiler on CPU")
def test_compile_flag_compiles_every_entry_point(noiseless_tiny):
    model, image, features = noiseless_tiny
    with torch.inference_mode():
        eager = model(image, features, iterations=1)
        model.compile(dynamic=False)
        compiled = model(image, features, iterations=1)
        step = model.upscale_step(features, model.encode_image(image, iterations=1))  # the pipelines' path
    for part in (model.encoder, model.decoder.block_0, model.decoder.block_1, model.attender, model.refiner):
        assert part._compiled_call_impl is not None
    torch.testing.assert_close(compiled, eager, **EXACT)
    torch.testing.assert_close(step, eager, **EXACT)
