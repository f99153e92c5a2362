"""UPLiFTPipeline: SD 1.5-shaped text-to-image + UPLiFT, with tiny random components saved and loaded for real."""

import json

import PIL.Image
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


# ---------------------------------------------------------------- every StableDiffusionPipeline argument works
@pytest.fixture(scope="module")
def euler_pair(tmp_path_factory):
    """An UPLiFTPipeline and a plain StableDiffusionPipeline sharing fresh tiny components, with a scheduler that takes
    custom timesteps and sigmas."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    components = build_components(tmp_path_factory.mktemp("euler"))
    components["scheduler"] = EulerDiscreteScheduler.from_config(components["scheduler"].config)
    torch.manual_seed(0)
    uplift = UPLiFTPipeline(**components, upsampler=UPLiFTModel.from_preset("tiny-vae").eval(),
                            requires_safety_checker=False)
    plain = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    for pipe in (uplift, plain):
        pipe.set_progress_bar_config(disable=True)
    return uplift, plain


def _low_res_latents(pipe, **kwargs):
    """The denoised low-resolution latents: UPLiFTPipeline's ``low_res_images`` or a plain pipeline's latents."""
    kwargs = {"num_inference_steps": STEPS, "generator": torch.Generator().manual_seed(0), **kwargs}
    if isinstance(pipe, UPLiFTPipeline):
        return pipe("a cat", output_type="latent", return_low_res=True, **kwargs).low_res_images
    return pipe("a cat", output_type="latent", **kwargs).images


@pytest.mark.parametrize("arguments", [
    {"timesteps": [999, 600, 200]},
    {"sigmas": [14.6, 4.0, 0.5]},
    {"guidance_rescale": 0.7},
    {"eta": 0.3, "guidance_scale": 3.0, "negative_prompt": "a dog"},  # (clip_skip: diffusers 0.42 vs transformers 5)
], ids=["timesteps", "sigmas", "guidance_rescale", "misc"])
def test_stable_diffusion_arguments_take_effect(euler_pair, arguments):
    uplift, plain = euler_pair
    ours = _low_res_latents(uplift, **arguments)
    torch.testing.assert_close(ours, _low_res_latents(plain, **arguments), atol=0, rtol=0)
    assert not torch.equal(ours, _low_res_latents(plain))  # the argument changed the result


def test_every_stable_diffusion_argument_is_passed_through(saved, monkeypatch):
    # Whatever StableDiffusionPipeline.__call__ accepts (also in later diffusers versions) reaches it unchanged.
    import inspect

    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

    _, pipe = saved
    received = {}

    def fake_call(self, prompt=None, **kwargs):
        received.update(kwargs, prompt=prompt)
        return StableDiffusionPipelineOutput(images=torch.randn(1, 4, 8, 8), nsfw_content_detected=None)

    names = [n for n in inspect.signature(StableDiffusionPipeline.__call__).parameters
             if n not in ("self", "kwargs", "prompt", "output_type", "return_dict", "generator")]
    sentinels = {name: object() for name in names}
    monkeypatch.setattr(StableDiffusionPipeline, "__call__", fake_call)
    generator = torch.Generator().manual_seed(0)
    out = pipe("a cat", upscale=2, generator=generator, output_type="latent", **sentinels)
    assert {n: received[n] for n in names} == sentinels
    assert received["prompt"] == "a cat" and received["generator"] is generator
    assert received["output_type"] == "latent" and out.images.shape == (1, 4, 16, 16)
    assert {"timesteps", "sigmas", "guidance_rescale", "ip_adapter_image", "ip_adapter_image_embeds"} <= set(names)


def _tiny_ip_adapter(unet, folder, image_embed_dim=16):
    """A randomly initialised IP-Adapter (4 image tokens) for ``unet``, saved in the published key layout."""
    from safetensors.torch import save_file

    cross = unet.config.cross_attention_dim
    state = {"image_proj.proj.weight": torch.randn(4 * cross, image_embed_dim),
             "image_proj.proj.bias": torch.zeros(4 * cross),
             "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    channels = unet.config.block_out_channels
    cross_attention = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    for key_id, name in zip(range(1, 2 * len(cross_attention), 2), cross_attention, strict=True):
        block = int(name.split(".")[1]) if not name.startswith("mid_block") else None
        hidden = (channels[-1] if block is None else
                  channels[block] if name.startswith("down_blocks") else list(reversed(channels))[block])
        for kind in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key_id}.{kind}.weight"] = torch.randn(hidden, cross) / cross**0.5
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "ip-adapter.safetensors"))
    return folder


def test_ip_adapter_inputs_take_effect(tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    components = build_components(tmp_path / "c")
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=32,
        patch_size=8, projection_dim=16)).eval()
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    extra = dict(image_encoder=image_encoder, feature_extractor=feature_extractor, requires_safety_checker=False)
    uplift = UPLiFTPipeline(**components, upsampler=UPLiFTModel.from_preset("tiny-vae").eval(), **extra)
    plain = StableDiffusionPipeline(**components, safety_checker=None, **extra)
    without = _low_res_latents(plain)
    uplift.load_ip_adapter(str(_tiny_ip_adapter(uplift.unet, tmp_path / "ip")), subfolder="",
                           weight_name="ip-adapter.safetensors", image_encoder_folder=None)
    for pipe in (uplift, plain):
        pipe.set_progress_bar_config(disable=True)

    reference_image = PIL.Image.new("RGB", (40, 40), (200, 40, 40))
    ours = _low_res_latents(uplift, ip_adapter_image=reference_image)
    torch.testing.assert_close(ours, _low_res_latents(plain, ip_adapter_image=reference_image), atol=0, rtol=0)
    assert not torch.equal(ours, without)
    embeds = [torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(1))]  # [negative, positive] for CFG
    ours = _low_res_latents(uplift, ip_adapter_image_embeds=embeds)
    torch.testing.assert_close(ours, _low_res_latents(plain, ip_adapter_image_embeds=embeds), atol=0, rtol=0)
    assert not torch.equal(ours, without)


# ---------------------------------------------------------------- upscale_latents: UPLiFT for any latent pipeline
def test_upscale_latents_after_any_pipeline_matches_uplift_pipeline(euler_pair):
    from uplift_diffusion.pipelines import upscale_latents

    uplift, plain = euler_pair
    generator = torch.Generator().manual_seed(0)  # one generator through denoising and UPLiFT, as UPLiFTPipeline does
    latents = plain("a cat", num_inference_steps=STEPS, generator=generator, output_type="latent").images
    out = upscale_latents(plain, latents, uplift.upsampler, upscale=2, generator=generator, output_type="pt")
    expected = uplift("a cat", num_inference_steps=STEPS, upscale=2, output_type="pt", return_low_res=True,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.low_res_images, expected.low_res_images, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.images, expected.images, atol=1e-6, rtol=0)
    assert out.images.shape == (1, 3, 128, 128)
    pil = upscale_latents(plain, latents, uplift.upsampler, upscale=4).images
    assert pil[0].size == (256, 256)
    upscaled_latents = upscale_latents(plain, latents, uplift.upsampler, output_type="latent").images
    assert upscaled_latents.shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="upscale must be one of"):
        upscale_latents(plain, latents, uplift.upsampler, upscale=3)
