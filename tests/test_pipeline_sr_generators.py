"""UPLiFTSuperResolutionPipeline with a list of generators (diffusers' convention): one per image, the length checked,
and image i with generator[i] comes out exactly as image i alone with that generator."""

import pytest
import torch
from PIL import Image
from sr_helpers import make_pipe

from uplift_diffusion.utils.errors import InputError, UserError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe(taef2):
    return make_pipe(taef2, noise_channels=2)  # noise channels: the generator decides the output


def _alone(pipe, image, seed, **kwargs):
    return pipe(image, scale=2, generator=gen(seed), output_type="pt", **kwargs).images[0]


@pytest.mark.parametrize("tiled", [False, True])
def test_image_i_with_generator_i_equals_image_i_alone(pipe, photo, tiled):
    kwargs = dict(tile_size=32, tile_overlap=8) if tiled else {}
    flipped = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    batch = pipe([photo, flipped], scale=2, generator=[gen(1), gen(2)], output_type="pt", **kwargs).images
    photo_alone = _alone(pipe, photo, 1, **kwargs)
    torch.testing.assert_close(batch[0], photo_alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(batch[1], _alone(pipe, flipped, 2, **kwargs), atol=1e-4, rtol=0)
    assert (photo_alone - _alone(pipe, photo, 2, **kwargs)).abs().max() > 1e-3  # not vacuous


def test_mixed_sizes_draw_from_their_own_generator(pipe, photo):
    small = photo.crop((0, 0, 40, 24))
    mixed = pipe([small, photo], scale=2, generator=[gen(1), gen(2)], output_type="pt").images
    torch.testing.assert_close(mixed[0], _alone(pipe, small, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], _alone(pipe, photo, 2), atol=1e-5, rtol=0)  # not generator[0]'s noise


def test_generator_count_must_match_the_images(pipe, photo):
    with pytest.raises(InputError, match="got 3 generators for 2 images") as info:
        pipe([photo, photo], scale=2, generator=[gen(0), gen(1), gen(2)])
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    with pytest.raises(InputError, match="got 1 generators for 2 images"):
        pipe([photo, photo], scale=2, generator=[gen(0)])


def test_tile_overlap_needs_tile_size(pipe, photo):
    with pytest.raises(InputError, match="tile_overlap needs tile_size"):
        pipe(photo, scale=2, tile_overlap=8)
