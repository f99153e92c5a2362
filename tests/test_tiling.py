"""Overlapping tiles with cross-fade blending (pipelines/tiling.py)."""

import pytest
import torch
import torch.nn.functional as F
from uplift_diffusion.pipelines.tiling import tile_spans, tiled_map


@pytest.mark.parametrize("size,tile,overlap", [(10, 4, 1), (17, 8, 3), (8, 8, 2), (5, 8, 2), (64, 16, 8)])
def test_spans_cover_with_overlap(size, tile, overlap):
    spans = tile_spans(size, tile, overlap)
    covered = torch.zeros(size, dtype=torch.bool)
    for start, end in spans:
        assert 0 <= start < end <= size and end - start == min(tile, size)
        covered[start:end] = True
    assert covered.all()
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end - start >= overlap


def test_local_op_is_reproduced_exactly():
    # A pointwise op that also changes the size: blending identical overlaps must give the untiled result.
    x = torch.randn(2, 3, 21, 13)

    def op(t):
        return F.interpolate(t, scale_factor=4, mode="nearest") * 2 + 1

    tiled = tiled_map(lambda y0, y1, x0, x1: op(x[..., y0:y1, x0:x1]), (21, 13), tile=8, overlap=3, out_scale=4)
    assert tiled.shape == (2, 3, 84, 52)
    torch.testing.assert_close(tiled, op(x))


def test_weights_form_a_partition_of_unity():
    ones = tiled_map(lambda y0, y1, x0, x1: torch.ones(1, 1, (y1 - y0) * 2, (x1 - x0) * 2), (30, 19), 8, 4, 2)
    torch.testing.assert_close(ones, torch.ones(1, 1, 60, 38))


def test_cross_fade_is_smooth_between_disagreeing_tiles():
    # Tiles that return their own constant (0, 1, 2, ...): instead of a hard seam (a jump of 1) the blend ramps
    # between them in steps of at most two ramp increments (2 / (overlap + 1)).
    counter = iter(range(100))
    out = tiled_map(lambda y0, y1, x0, x1: torch.full((1, 1, y1 - y0, x1 - x0), float(next(counter))),
                    (1, 40), tile=16, overlap=8, out_scale=1)
    steps = out[0, 0, 0].diff().abs()
    assert steps.max() <= 2 / 9 + 1e-6
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 0, -1] == 3


def test_bad_overlap_and_wrong_tile_output_are_reported():
    with pytest.raises(ValueError, match="larger than the overlap"):
        tile_spans(10, 4, 4)
    with pytest.raises(ValueError, match="tile function returned size"):
        tiled_map(lambda y0, y1, x0, x1: torch.zeros(1, 1, 3, 3), (8, 8), 4, 1, 2)


def test_the_pipeline_says_how_much_more_work_its_upsampler_does_in_tiles():
    from uplift_diffusion import UPLiFTSuperResolutionPipeline

    pipe = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    factor = pipe.vae_scale_factor
    assert pipe.upsampler_tile_work((64 * factor, 64 * factor), 64 * factor) == 1.0  # one tile: no overlap
    # 80 latents in tiles of 64 overlapping by 16: two tiles, 128 latents of work for 80
    assert pipe.upsampler_tile_work((64 * factor, 80 * factor), 64 * factor) == pytest.approx(1.6)
    assert pipe.upsampler_tile_work((64 * factor, 80 * factor), 64 * factor, 0) == pytest.approx(1.6)  # end-aligned
    assert pipe.upsampler_tile_work((80 * factor, 80 * factor), 64 * factor) == pytest.approx(1.6 ** 2)


@pytest.mark.parametrize("vae_kind", ["taef2", "tiny"])
@torch.no_grad()
def test_the_pipeline_says_how_much_more_work_its_vae_does_in_tiles(vae_kind):
    """Encoder and decoder work of a tiled request over an untiled one, against the multiply-adds a real run counts:
    TAEF2's exact tiles compute their halos again, a diffusers VAE's blended decoder tiles their overlaps."""
    from diffusers import AutoencoderTiny

    from uplift_diffusion import UPLiFTModel, UPLiFTSuperResolutionPipeline

    if vae_kind == "taef2":
        pipe = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
        height, width, tile = 64, 320, 64  # encoder: 256-px exact tiles; decoder: 512-px ones over 128 x 640
    else:
        torch.manual_seed(0)
        vae = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                              num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4, latent_channels=4).eval()
        upsampler = UPLiFTModel.from_preset("tiny-vae", in_channels=4).eval()
        pipe = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=upsampler)
        height, width, tile = 16, 656, 64  # decoder: 128-latent tiles overlapping by 32 over 4 x 164 latents
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, height, width)
    pipe(image, scale=2, output_type="pt")  # prepares the fast path's kernel weights, to be named below
    whole, tiled = (_work_by_part(pipe, image, tile_size) for tile_size in (None, tile))
    decoder = pipe.decoder_tile_work((height, width), 2, tile)
    assert decoder > 1.01 and decoder == pytest.approx(tiled["decoder"] / whole["decoder"], rel=1e-3)
    encoder = pipe.encoder_tile_work((height, width), tile)
    assert encoder == pytest.approx(tiled["encoder"] / whole["encoder"], rel=1e-3)
    assert (encoder > 1.001) == (vae_kind == "taef2")  # a diffusers VAE encodes whole images


def _work_by_part(pipe, image, tile_size):
    """Multiply-adds per model part of a 2x run."""
    from uplift_diffusion import fast_paths
    from uplift_diffusion.app.progress import WorkCounter

    modules = {"encoder": pipe.vae.encoder, "upsampler": pipe.upsampler, "decoder": pipe.vae.decoder}
    parts = {t.data_ptr(): name for name, module in modules.items()
             for t in (*module.parameters(), *fast_paths.prepared_weights(module))}
    with WorkCounter(parts=parts) as counter:
        pipe(image, scale=2, tile_size=tile_size, output_type="pt")
    return counter.macs_by_part
