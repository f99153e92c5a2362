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
