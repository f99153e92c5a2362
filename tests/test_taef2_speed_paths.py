"""TAEF2's CPU fast path and exact tiles: the same values as the plain layers (real photos), tiles equal to the whole
map, the switch, the memory estimate. No timings here (benchmarks/taef2_speed.py measures them)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from uplift_diffusion import TAEF2, fast_paths
from uplift_diffusion.backbones import taef2 as taef2_module
from uplift_diffusion.backbones.vae import estimate_sr_memory, memory_advice

TOLERANCE = 1e-5  # the bound: fast / tiled paths against the plain decoder


@pytest.fixture(scope="module")
def taef2(shared_dir):
    return TAEF2.from_pretrained(shared_dir / "weights" / "taef2")


@pytest.fixture(scope="module")
def photos(shared_dir):
    """Two real photos in [-1, 1] at sizes that are multiples of 8 but not of the tiles (and not square)."""
    out = []
    for name, box in (("photos/astronaut.png", (176, 40, 328, 144)), ("kodak/kodim05.png", (0, 0, 120, 88))):
        image = Image.open(shared_dir / "data" / name).convert("RGB").crop(box)
        out.append(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255 * 2 - 1)
    return out


def needs_fast_path():
    if not taef2_module.fast_path_active(torch.zeros(1, 3, 8, 8)):
        pytest.skip("oneDNN's fused conv ops are not available in this torch build / CPU")


@torch.inference_mode()
def test_fast_path_equals_the_plain_layers_on_real_photos(taef2, photos):
    # The bound is the 1e-5, against the decoder computed in float64. Between two float32 runs it is the
    # float32 noise floor: the plain layers merely re-laid-out channels-last differ from themselves by up to 1.04e-5
    # under ONEDNN_MAX_CPU_ISA=AVX2 (measured), so fast vs plain float32 gets twice that.
    needs_fast_path()
    exact = torch.nn.Module.to(copy.deepcopy(taef2), torch.float64)
    for x in photos:
        with fast_paths.fast_paths(False):
            plain_latents = taef2.encoder(x.add(1).div(2))  # the published Sequential, nothing of ours
            plain_rgb = taef2.decoder(plain_latents).clamp(0, 1).mul(2).sub(1)
            exact_latents = exact.encoder(x.double().add(1).div(2))
            exact_rgb = exact.decoder(plain_latents.double()).clamp(0, 1).mul(2).sub(1)
        latents = taef2.encode(x).latents
        rgb = taef2.decode(plain_latents).sample
        assert (latents - exact_latents).abs().max() <= TOLERANCE
        assert (rgb - exact_rgb).abs().max() <= TOLERANCE
        assert (latents - plain_latents).abs().max() <= 2 * TOLERANCE
        assert (rgb - plain_rgb).abs().max() <= 2 * TOLERANCE
        assert rgb.is_contiguous() and latents.is_contiguous()


@torch.inference_mode()
def test_fast_path_runs_onednn_fused_kernels(taef2, photos, monkeypatch):
    # The fast path must really be taken by the public entry points (the exactness test alone passes without it).
    needs_fast_path()
    calls = []
    original = torch.ops.mkldnn._convolution_pointwise

    def spy(*args):
        calls.append(args[7])  # the post-op: "relu" / "none"
        return original(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", spy)
    taef2.decode(taef2.encode(photos[1][..., :64, :64]).latents)
    assert "relu" in calls
    calls.clear()
    with fast_paths.fast_paths(False):  # the project-wide switch turns it off
        taef2.decode(taef2.encode(photos[1][..., :64, :64]).latents)
    assert calls == []


@torch.inference_mode()
def test_upsample_conv_as_subpixel_conv_equals_upsample_then_conv():
    needs_fast_path()
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(2, 16, 7, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    expected = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    assert torch.allclose(fast_paths.upsample_conv(x, conv), expected, atol=1e-5)


@torch.inference_mode()
def test_cached_fast_weights_follow_weight_updates():
    needs_fast_path()
    torch.manual_seed(0)
    model = TAEF2(latent_channels=4, channels=8, encoder_blocks=(1, 1), decoder_blocks=(1, 1)).eval()
    z = torch.randn(1, 4, 6, 6)
    before = model.decode(z).sample
    with torch.no_grad():
        for conv in model.decoder.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.mul_(-1)  # in place: same storage, new version
    after = model.decode(z).sample
    with fast_paths.fast_paths(False):
        assert torch.allclose(after, model.decode(z).sample, atol=1e-6)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("tile", [32, 64])
@torch.inference_mode()
def test_tiled_encode_equals_untiled(taef2, photos, tile, fast):
    # Exact tiles (each reads the halo its receptive field needs), so the bound is float rounding, not the halo.
    with fast_paths.fast_paths(fast):
        for x in photos:
            whole = taef2.encode(x).latents
            tiled = taef2.encode_tiled(x, tile_size=tile)
            assert tiled.shape == whole.shape
            assert (tiled - whole).abs().max() <= TOLERANCE
        assert torch.equal(taef2.encode_global(taef2.encode_local(x)), whole)


def recorder(seen: list):
    """A ``progress`` wrapper that records the tiles it is given."""
    def wrap(tiles):
        seen.extend(tiles)
        return tiles

    return wrap


@pytest.mark.parametrize("fast", [True, False])
@torch.inference_mode()
def test_tiled_decode_equals_untiled(taef2, photos, fast):
    with fast_paths.fast_paths(fast):
        latents = taef2.encode(photos[0]).latents  # 13 x 19 latents: edge tiles of every shape
        whole = taef2.decode(latents).sample
        for tile in (40, 96):
            seen = []
            tiled = taef2.decode_tiled(latents, tile_size=tile, progress=recorder(seen))
            assert (tiled - whole).abs().max() <= TOLERANCE
            assert len(seen) == taef2.decode_tile_count(*latents.shape[-2:], tile_size=tile)


@pytest.mark.parametrize("fast", [True, False])
@torch.inference_mode()
def test_tile_work_is_what_the_tiles_compute(taef2, photos, fast):
    """The work of exact tiles over the whole map's (progress plans size an untiled run's work with it) equals the
    multiply-adds a real run counts, on either path (the fast one runs upsamples as 2x2 sub-pixel convs)."""
    from uplift_diffusion.app.progress import WorkCounter

    x = photos[0]  # 104 x 152 pixels, 13 x 19 latents
    with fast_paths.fast_paths(fast):
        latents = taef2.encode(x).latents
        for tile in (40, 96):
            with WorkCounter() as whole:
                taef2.decode(latents)
            with WorkCounter() as tiled:
                taef2.decode_tiled(latents, tile_size=tile)
            work = taef2.decode_tile_work(*latents.shape[-2:], tile_size=tile)
            assert work > 1.05 and work == pytest.approx(tiled.total / whole.total, rel=1e-4)
        with WorkCounter() as whole:
            taef2.encode(x)
        with WorkCounter() as tiled:
            taef2.encode_tiled(x, tile_size=48)
        work = taef2.encode_tile_work(*x.shape[-2:], tile_size=48)
        assert work > 1.02 and work == pytest.approx(tiled.total / whole.total, rel=1e-4)


@torch.inference_mode()
def test_batched_tiles_and_progress(taef2, photos):
    x = torch.cat([photos[1], photos[1].flip(-1)])
    seen = []
    tiled = taef2.encode_tiled(x, tile_size=48, progress=recorder(seen))
    assert (tiled - taef2.encode(x).latents).abs().max() <= TOLERANCE
    assert len(seen) == taef2.encode_tile_count(*x.shape[-2:], tile_size=48)


@pytest.mark.parametrize("tile", [0, 100, 12.0, True])
def test_bad_tile_sizes_are_refused(taef2, tile):
    with pytest.raises(ValueError, match="tile_size must be a multiple of 8"):
        taef2.encode_tiled(torch.zeros(1, 3, 16, 16), tile_size=tile)
    with pytest.raises(ValueError, match="tile_size must be a multiple of 8"):
        taef2.decode_tiled(torch.zeros(1, 32, 2, 2), tile_size=tile)


@torch.inference_mode()
def test_bf16_fast_path_is_close(taef2, photos):
    caps = fast_paths.capabilities()
    if not caps.onednn_bf16:
        pytest.skip("no native oneDNN bf16 on this CPU")
    x = photos[1]
    reference = taef2.decode(taef2.encode(x).latents).sample
    bf16 = torch.nn.Module.to(copy.deepcopy(taef2), torch.bfloat16)  # opt-in: the user casts the model
    assert taef2_module.fast_path_active(x.bfloat16())
    out = bf16.decode(bf16.encode(x.bfloat16()).latents).sample.float()
    assert (out - reference).abs().mean() < 2e-2


def test_memory_estimate_orders_and_advice(taef2):
    whole = estimate_sr_memory(taef2, 3000, 4000, 4)
    tiled = estimate_sr_memory(taef2, 3000, 4000, 4, tile_size=256)
    assert tiled.encode < whole.encode / 4 and tiled.decode < whole.decode / 4
    assert taef2.encode_memory(3000, 4000) > 8 * 2**30  # a 12 MP encode untiled: the reported allocator failure
    assert taef2.encode_memory(3000, 4000, tile_size=512) < 3 * 2**30
    small = estimate_sr_memory(taef2, 321, 481, 2)
    assert small.peak < 2**30
    assert memory_advice(taef2, 321, 481, 2, available=4 * 2**30) is None
    advice = memory_advice(taef2, 3000, 4000, 2, available=16 * 2**30)
    assert "--tile-size" in advice and "4000x3000" in advice and "GiB" in advice
    advice = memory_advice(taef2, 3000, 4000, 4, tile_size=256, available=16 * 2**30)
    assert "--scale 2" in advice
