"""The super-resolution pipeline's one progress bar covers the whole job: the encode, every UPLiFT step (or tile) and
the decode (or its tiles)."""

import io

import pytest
import torch

from uplift_diffusion import UPLiFTSuperResolutionPipeline


@pytest.fixture(scope="module")
def pipe():
    pipe = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    pipe.set_progress_bar_config(file=io.StringIO())  # enabled (a disabled tqdm does not count), but quiet
    return pipe


def run_and_record(pipe, monkeypatch, **call):
    bars = []
    make_bar = pipe.progress_bar

    def recording(*args, **kwargs):
        bars.append(make_bar(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(pipe, "progress_bar", recording)
    pipe(torch.rand(1, 3, 64, 64), **call)
    return [(bar.n, bar.total) for bar in bars]


@pytest.mark.parametrize("call,units", [
    (dict(scale=4), 1 + 2 + 1),  # encode, two UPLiFT steps, decode
    (dict(scale=2, output_type="latent"), 1 + 1),  # nothing decoded
    # 8x8 latents in tiles of 4 with overlap 1: spans [0,4) [3,7) [4,8) per axis = 9 tiles; taef2's exact tiled
    # encoder runs its 3 stages on one 256-px tile each; the 16x16 upscaled latents fit one exact decoder tile
    (dict(scale=2, tile_size=32, tile_overlap=8), 3 + 9 + 1),
])
def test_one_bar_counts_every_unit_of_work(pipe, monkeypatch, call, units):
    assert run_and_record(pipe, monkeypatch, **call) == [(units, units)]
