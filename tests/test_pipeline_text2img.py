"""UPLiFTPipeline: SD 1.5-shaped text-to-image + UPLiFT, with tiny random components saved and loaded for real."""

import json

import pytest
import torch
from tiny_sd import build_components, build_pipeline
from uplift_diffusion.pipelines import UPLiFTPipeline, UPLiFTPipelineOutput

from uplift_diffusion import UPLiFTModel

STEPS = 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uplift_pipeline")
    pipe = build_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder / "pipeline", pipe


def run(pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe("a cat", generator=torch.Generator().manual_seed(0), **kwargs)


def test_model_index_names_our_module(saved):
    folder, pipe = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "UPLiFTPipeline"
    assert index["upsampler"] == ["uplift_diffusion.model", "UPLiFTModel"]
    assert isinstance(pipe, UPLiFTPipeline) and isinstance(pipe.upsampler, UPLiFTModel)


@pytest.mark.parametrize("upscale", [1, 2, 4])
def test_output_sizes(saved, upscale):
    _, pipe = saved
    out = run(pipe, upscale=upscale, return_low_res=True)
    assert isinstance(out, UPLiFTPipelineOutput)
    assert out.images[0].size == (64 * upscale, 64 * upscale)
    assert out.low_res_images[0].size == (64, 64)


def test_np_output_and_non_square(saved):
    _, pipe = saved
    images = run(pipe, upscale=2, height=48, width=80, output_type="np").images
    assert images.shape == (1, 96, 160, 3) and images.min() >= 0 and images.max() <= 1


def test_latent_output_and_determinism(saved):
    _, pipe = saved
    latents = run(pipe, upscale=2, output_type="latent", return_low_res=True)
    assert latents.images.shape == (1, 4, 16, 16) and latents.low_res_images.shape == (1, 4, 8, 8)
    torch.testing.assert_close(run(pipe, upscale=2, output_type="latent").images, latents.images)
    # The latent output is scaled like any SD pipeline's: decoding it reproduces the images before colour correction.
    decoded = pipe.vae.decode(latents.images / pipe.vae.config.scaling_factor).sample.add(1).div(2).clamp(0, 1)
    raw = run(pipe, upscale=2, output_type="pt", color_correction=False).images
    torch.testing.assert_close(decoded, raw, atol=1e-4, rtol=0)


def test_upscale_1_is_plain_stable_diffusion(saved):
    from diffusers import StableDiffusionPipeline

    _, pipe = saved
    components = {k: v for k, v in pipe.components.items() if k != "upsampler"}
    plain = StableDiffusionPipeline(**components, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    expected = plain("a cat", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                     output_type="pt").images
    torch.testing.assert_close(run(pipe, upscale=1, output_type="pt").images, expected, atol=1e-5, rtol=0)


def test_colour_correction_matches_low_res_means(saved):
    _, pipe = saved
    out = run(pipe, upscale=2, output_type="pt", return_low_res=True)
    uncorrected = run(pipe, upscale=2, output_type="pt", color_correction=False).images
    low = out.low_res_images.mean(dim=(2, 3))
    err_on = (out.images.mean(dim=(2, 3)) - low).abs().max()
    err_off = (uncorrected.mean(dim=(2, 3)) - low).abs().max()
    assert err_on < err_off and err_on < 0.02


def test_save_load_round_trip(saved, tmp_path):
    _, pipe = saved
    pipe.save_pretrained(tmp_path)
    loaded = UPLiFTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(run(loaded, upscale=2, output_type="pt").images,
                               run(pipe, upscale=2, output_type="pt").images)
    bf16 = UPLiFTPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.unet.dtype == bf16.upsampler.dtype == torch.bfloat16


def test_from_stable_diffusion_folder_with_upsampler(tmp_path):
    # The documented entry point: an SD 1.5 repo / folder (no upsampler in it) plus an UPLiFT model.
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**build_components(tmp_path / "c"), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "sd")
    pipe = UPLiFTPipeline.from_pretrained(tmp_path / "sd", upsampler=UPLiFTModel.from_preset("tiny-vae").eval())
    pipe.set_progress_bar_config(disable=True)
    assert run(pipe, upscale=2).images[0].size == (128, 128)
    with pytest.raises(ValueError, match="upsampler"):
        UPLiFTPipeline.from_pretrained(tmp_path / "sd")


def test_callback_and_batch(saved):
    _, pipe = saved
    seen = []

    def callback(p, step, timestep, kwargs):
        seen.append(kwargs["latents"].shape)
        return {}

    out = pipe(["a cat", "a dog"], num_inference_steps=STEPS, upscale=2, num_images_per_prompt=2,
               generator=[torch.Generator().manual_seed(i) for i in range(4)], callback_on_step_end=callback)
    assert len(out.images) == 4 and seen[0] == (4, 4, 8, 8)
    assert len(seen) == len(pipe.scheduler.timesteps)  # once per UNet call (PNDM adds a warm-up step)


def test_clear_errors(saved):
    _, pipe = saved
    with pytest.raises(ValueError, match="upscale must be one of"):
        run(pipe, upscale=3)
    with pytest.raises(ValueError, match="output_type"):
        run(pipe, output_type="jpeg")
    wrong = UPLiFTPipeline(**{**pipe.components, "upsampler": UPLiFTModel.from_preset("tiny-vae", in_channels=32)})
    with pytest.raises(ValueError, match="does not fit the vae"):
        run(wrong)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_model_cpu_offload_without_accelerator_raises(saved):
    _, pipe = saved
    with pytest.raises(RuntimeError, match="requires accelerator"):
        pipe.enable_model_cpu_offload()
