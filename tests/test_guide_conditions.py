"""Guide conditions: what a model is told about its guide (a decode or a photo, how sharp), at every door."""

import pytest
import torch
from sr_helpers import make_pipe

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.color import sharpness
from uplift_diffusion.utils.errors import InputError

CONDITIONS = ["decoded", "sharpness"]


def _told(model):
    """Record the ``image`` argument of every ``encode_image`` call (the guide with its condition planes)."""
    seen = []
    original = model.encode_image

    def encode_image(image, *args, **kwargs):
        seen.append(image.clone())
        return original(image, *args, **kwargs)

    model.encode_image = encode_image
    return seen


def test_conditions_are_constant_planes_of_the_whole_guide():
    model = UPLiFTModel.from_preset("tiny-vae", guide_conditions=CONDITIONS).eval()
    assert model.guide_channels == 5 and model.encoder.block_0.blocks[0].conv[0].in_channels == 5
    image = torch.rand(3, 3, 48, 40)
    guide = model.normalize_image(image, decoded=torch.tensor([True, False, True]))
    torch.testing.assert_close(guide[:, :3], image, atol=0, rtol=0)
    assert guide[:, 3].amin(dim=(1, 2)).tolist() == guide[:, 3].amax(dim=(1, 2)).tolist() == [1.0, 0.0, 1.0]
    torch.testing.assert_close(guide[:, 4, 0, 0], sharpness(image))
    assert (guide[:, 4] == guide[:, 4, :1, :1]).all()
    assert model.normalize_image(image)[:, 3].abs().sum() == 0  # a photo unless told otherwise
    out = model(guide, torch.randn(3, 4, 6, 5), iterations=2)
    assert out.shape == (3, 4, 24, 20) and torch.isfinite(out).all()


def test_the_condition_planes_carry_the_models_scale():
    model = UPLiFTModel.from_preset("tiny-vae", guide_conditions=CONDITIONS, guide_condition_scale=8.0)
    image = torch.rand(2, 3, 32, 32)
    guide = model.normalize_image(image, decoded=True)
    assert guide[:, 3].unique().tolist() == [8.0]
    torch.testing.assert_close(guide[:, 4, 0, 0], 8 * sharpness(image))
    with pytest.raises(InputError, match="guide_condition_scale must be a positive number"):
        UPLiFTModel.from_preset("tiny-vae", guide_conditions=CONDITIONS, guide_condition_scale=0)


def test_a_model_without_conditions_is_unchanged():
    model = UPLiFTModel.from_preset("tiny-vae").eval()
    image = torch.rand(1, 3, 16, 16)
    assert model.normalize_image(image, decoded=True) is image and model.guide_channels == 3


@pytest.mark.parametrize("bad", [["decoded", "decoded"], ["blur"], "decoded"])
def test_unknown_or_repeated_conditions_are_refused(bad):
    with pytest.raises(InputError, match="guide_conditions must be"):
        UPLiFTModel.from_preset("tiny-vae", guide_conditions=bad)


def test_the_conditions_are_saved_with_the_model(tmp_path):
    model = UPLiFTModel.from_preset("tiny-vae", guide_conditions=CONDITIONS)
    model.save_pretrained(tmp_path)
    again = UPLiFTModel.from_pretrained(tmp_path)
    assert again.config.guide_conditions == CONDITIONS
    torch.testing.assert_close(again.state_dict(), model.state_dict())


def test_an_rgb_only_guide_is_refused_with_the_way_to_make_one():
    model = UPLiFTModel.from_preset("tiny-vae", guide_conditions=CONDITIONS)
    with pytest.raises(InputError, match="expected 5 .RGB plus the guide conditions decoded, sharpness: pass the "
                                         "image through normalize_image"):
        model(torch.rand(1, 3, 16, 16), torch.randn(1, 4, 2, 2))


def test_the_super_resolution_pipeline_tells_a_photo_from_a_decode(taef2, photo):
    pipe = make_pipe(taef2, guide_conditions=CONDITIONS)
    seen = _told(pipe.upsampler)
    pipe(photo, scale=2, output_type="pt")  # a photo
    latents = pipe(photo, scale=2, output_type="latent").images
    pipe(latents=latents[..., :8, :8], scale=2, output_type="pt")  # raw latents: the guide is their decode
    assert [t[:, 3].unique().tolist() for t in seen] == [[0.0], [0.0], [1.0]]


def test_tiles_are_told_the_sharpness_of_the_whole_photo(taef2, shared_dir):
    from PIL import Image

    from uplift_diffusion.utils.image_ops import to_tensor_uint8

    image = Image.open(shared_dir / "data" / "kodak" / "kodim03.png").convert("RGB").crop((0, 0, 128, 96))
    pipe = make_pipe(taef2, guide_conditions=CONDITIONS)
    seen = _told(pipe.upsampler)
    pipe(image, scale=2, output_type="latent", tile_size=48, tile_overlap=16)
    whole = sharpness(to_tensor_uint8(image)[None].float())
    assert len(seen) > 2 and all(t.shape[-1] < 128 for t in seen)  # tiles
    for tile in seen:
        torch.testing.assert_close(tile[:, 4].unique(), whole, atol=1e-5, rtol=0)


def test_generation_pipelines_tell_the_model_its_guide_is_a_decode(taef2):
    from uplift_diffusion.pipelines.common import upscale_latents

    pipe = make_pipe(taef2, guide_conditions=CONDITIONS)
    seen = _told(pipe.upsampler)
    upscale_latents(pipe, torch.randn(1, 32, 6, 6), pipe.upsampler, 2, output_type="pt")
    assert seen[0][:, 3].unique().tolist() == [1.0]


def test_training_tells_each_item_whether_its_guide_is_a_decode():
    from uplift_diffusion.training.losses import multi_depth_loss

    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae", noise_channels=0, guide_conditions=CONDITIONS)
    seen = _told(model)
    images = [torch.rand(2, 3, 64 // 2**j, 64 // 2**j) for j in range(3)]
    features = [torch.randn(2, 4, 8 // 2**j, 8 // 2**j) for j in range(3)]
    guides = [None, torch.rand(2, 3, 32, 32), torch.rand(2, 3, 16, 16)]
    multi_depth_loss(model, images, features, [1, 2], guides=guides, decoded=torch.tensor([True, False]))
    assert [t[:, 3, 0, 0].tolist() for t in seen] == [[1.0, 0.0], [1.0, 0.0]]
    torch.testing.assert_close(seen[1][:, :3], guides[2])
    seen.clear()
    multi_depth_loss(model, images, features, [1])  # photo guides
    assert seen[0][:, 3].abs().sum() == 0
