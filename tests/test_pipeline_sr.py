"""UPLiFTSuperResolutionPipeline: real taef2 autoencoder on photos, diffusers VAEs, batching, padding, tiling."""

import numpy as np
import pytest
import torch
from PIL import Image
from sr_helpers import make_pipe
from uplift_diffusion.pipelines import UPLiFTPipelineOutput, UPLiFTSuperResolutionPipeline

from uplift_diffusion import TAEF2, UPLiFTModel


def seeded():
    return torch.Generator().manual_seed(0)


def test_taef2_photo_4x_end_to_end(taef2, photo):
    pipe = make_pipe(taef2)
    out = pipe(photo, scale=4, generator=seeded())
    assert isinstance(out, UPLiFTPipelineOutput)
    (image,) = out.images
    assert image.size == (400, 300)  # exactly 4x the input
    array = pipe(photo, scale=4, generator=seeded(), output_type="np").images
    assert array.shape == (1, 300, 400, 3) and np.isfinite(array).all()
    assert array.min() >= 0 and array.max() <= 1
    np.testing.assert_allclose(np.asarray(image) / 255.0, array[0], atol=1 / 255 + 1e-6)  # same seed, same image


def test_input_types_agree(taef2, photo):
    pipe = make_pipe(taef2)
    reference = pipe(photo, scale=2, generator=seeded(), output_type="pt").images
    uint8 = np.array(photo)
    as_float = torch.from_numpy(uint8).permute(2, 0, 1).float() / 255
    for image in (uint8, uint8.astype(np.float32) / 255, as_float, as_float[None], [photo]):
        torch.testing.assert_close(pipe(image, scale=2, generator=seeded(), output_type="pt").images, reference)


def test_batches_and_mixed_sizes(taef2, photo):
    pipe = make_pipe(taef2)
    small = photo.crop((0, 0, 40, 24))
    batch = pipe([photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], scale=2, output_type="np").images
    assert batch.shape == (2, 150, 200, 3)
    mixed = pipe([photo, small], scale=2, output_type="pt").images
    assert isinstance(mixed, list) and [tuple(m.shape) for m in mixed] == [(3, 150, 200), (3, 48, 80)]
    assert [im.size for im in pipe([small, photo], scale=2).images] == [(80, 48), (200, 150)]


def test_latent_output_is_upscaled_raw_latents(taef2, photo):
    latents = make_pipe(taef2)(photo, scale=4, output_type="latent").images
    # padded 104 x 80 input -> 13 x 10 latents -> 4x
    assert latents.shape == (1, 32, 40, 52)


def test_tiled_matches_untiled(taef2, shared_dir):
    # Without noise channels the only difference between the two runs is the tiling.
    image = Image.open(shared_dir / "data" / "kodak" / "kodim01.png").convert("RGB").crop((200, 200, 392, 392))
    pipe = make_pipe(taef2, noise_channels=0)
    full = pipe(image, scale=2, output_type="pt").images
    tiled = pipe(image, scale=2, output_type="pt", tile_size=128, tile_overlap=64).images
    assert tiled.shape == full.shape == (1, 3, 384, 384)
    psnr = -10 * torch.log10(((full - tiled) ** 2).mean())
    assert psnr > 30, f"tiled and untiled outputs differ: PSNR {psnr:.1f} dB"


@pytest.mark.parametrize("kind", ["kl", "tiny"])
def test_diffusers_vaes(kind):
    from diffusers import AutoencoderKL, AutoencoderTiny

    torch.manual_seed(0)
    if kind == "kl":
        vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            norm_num_groups=4)
    else:
        vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                              num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)
    pipe = make_pipe(vae.eval())
    image = torch.rand(2, 3, 36, 28)
    out = pipe(image, scale=4, output_type="pt").images
    assert out.shape == (2, 3, 144, 112) and torch.isfinite(out).all()


def test_save_and_load_round_trip(taef2, photo, tmp_path):
    pipe = make_pipe(taef2)
    pipe.save_pretrained(tmp_path)
    loaded = UPLiFTSuperResolutionPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.vae, TAEF2) and isinstance(loaded.upsampler, UPLiFTModel)
    loaded.set_progress_bar_config(disable=True)
    a = pipe(photo, scale=2, generator=seeded(), output_type="pt").images
    torch.testing.assert_close(loaded(photo, scale=2, generator=seeded(), output_type="pt").images, a)


def test_clear_errors(taef2, photo):
    pipe = make_pipe(taef2)
    with pytest.raises(ValueError, match="scale must be a finite number >= 1"):
        pipe(photo, scale=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe(torch.rand(1, 3, 16, 16) * 2 - 1)
    with pytest.raises(TypeError, match="PIL images, numpy arrays or torch tensors"):
        pipe("photo.png")
    with pytest.raises(ValueError, match="tile_size"):
        pipe(photo, tile_size=20)
    with pytest.raises(ValueError, match="32 latent channels"):
        UPLiFTSuperResolutionPipeline(vae=taef2, upsampler=UPLiFTModel.from_preset("tiny-vae"))(photo)
