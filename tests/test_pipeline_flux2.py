"""UPLiFT FLUX.2 pipelines (klein and dev) with tiny FLUX.2-shaped components built and saved locally
(tests/tiny_flux2.py), the built-in taef2 UPLiFT model as the default upsampler, the real taef2 as the fast guide VAE
and as the decoding VAE of the upscale path; the command line and the text-to-image benchmarks on them.

Most checks of UPLiFT's part run :meth:`upscale_flux2_latents` (what ``__call__`` runs after denoising) on the
latents of one denoising run, to keep the file fast; the full calls check what only they can (pass-through,
batches, the guide of a real call, equality with plain FLUX.2)."""

import inspect
import json

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_flux2 import (
    CLI_TEXT_LAYERS,
    MAX_SEQUENCE_LENGTH,
    TEXT_OUT_LAYERS,
    build_flux2_components,
    build_klein_components,
    save_klein_pipeline,
)
from uplift_diffusion.pipelines import UPLiFTFlux2KleinPipeline, UPLiFTFlux2Pipeline, UPLiFTPipelineOutput

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.backbones.vae import decode_latents

STEPS = 2
SIZE = 64  # low resolution of the tiny pipelines: raw latents [B, 32, 8, 8]
TINY_CALL = {"num_inference_steps": STEPS, "guidance_scale": 1.0, "height": SIZE, "width": SIZE,
             "max_sequence_length": MAX_SEQUENCE_LENGTH, "text_encoder_out_layers": TEXT_OUT_LAYERS}


def run(pipe, prompt="a cat", seed=0, **kwargs):
    """A tiny FLUX.2 klein call at 64², 2 steps, no guidance (one transformer pass per step), short prompts."""
    kwargs = {**TINY_CALL, **kwargs}
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    return pipe(prompt=prompt, **kwargs)


def noisy_upsampler(seed=0):
    """A random UPLiFT model for 32-channel latents with noise channels (so generators matter); config "mean"."""
    torch.manual_seed(seed)
    model = UPLiFTModel.from_preset("tiny-vae", in_channels=32).eval()
    assert model.config.noise_channels > 0
    return model


def with_components(pipe, **replace):
    new = type(pipe)(**{**pipe.components, **replace})
    new.set_progress_bar_config(disable=True)
    return new


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return build_klein_components(tmp_path_factory.mktemp("flux2_components"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, components):
    """A tiny UPLiFTFlux2KleinPipeline with the built-in upsampler as its component, saved and loaded back."""
    from uplift_diffusion.builtin import load_builtin_upsampler

    folder = tmp_path_factory.mktemp("uplift_flux2") / "pipeline"
    UPLiFTFlux2KleinPipeline(**components, upsampler=load_builtin_upsampler("taef2")).save_pretrained(folder)
    pipe = UPLiFTFlux2KleinPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


@pytest.fixture(scope="module")
def pipe(saved):
    return saved[1]


@pytest.fixture(scope="module")
def latents(pipe):
    """The denoised low-resolution raw latents of ``run(pipe)`` (seed 0), [1, 32, 8, 8]."""
    return run(pipe, upscale=1, output_type="latent").images


@pytest.fixture(scope="module")
def plain(components):
    from diffusers import Flux2KleinPipeline

    plain = Flux2KleinPipeline(**components)
    plain.set_progress_bar_config(disable=True)
    return plain


@pytest.fixture(scope="module")
def taef2():
    from uplift_diffusion.builtin import load_builtin_vae

    return load_builtin_vae("taef2")


# ---------------------------------------------------------------- components, defaults, save / load
def test_builtin_upsampler_as_a_component_is_saved(saved):
    from uplift_diffusion.builtin import load_builtin_upsampler

    folder, pipe = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "UPLiFTFlux2KleinPipeline"
    assert index["upsampler"] == ["uplift_diffusion.model", "UPLiFTModel"] and index["guide_vae"] == [None, None]
    builtin = load_builtin_upsampler("taef2")
    assert pipe.upsampler.config.in_channels == 32 and pipe.upsampler.config.color_correction == "detail"
    for (name, a), (_, b) in zip(pipe.upsampler.state_dict().items(), builtin.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_from_a_plain_flux2_folder_and_from_pipe(tmp_path, plain, pipe):
    # What a FLUX.2-klein Hub repo holds: no upsampler in model_index.json -> None, and the built-in one (offline)
    # runs in its place: the same images as with it as a component.
    folder = save_klein_pipeline(tmp_path / "klein")
    loaded = UPLiFTFlux2KleinPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.upsampler is None and loaded.guide_vae is None
    assert loaded.upsampler_in_use().config.color_correction == "detail"
    torch.testing.assert_close(run(loaded, output_type="pt").images, run(pipe, output_type="pt").images,
                               atol=0, rtol=0)
    wrapped = UPLiFTFlux2KleinPipeline.from_pipe(plain)  # shares the plain pipeline's modules
    assert wrapped.transformer is plain.transformer and wrapped.upsampler is None
    assert isinstance(wrapped.upsampler_in_use(), UPLiFTModel)
    back = type(plain).from_pipe(pipe)  # and back to plain FLUX.2
    assert back.transformer is pipe.transformer and "upsampler" not in back.components


def test_saved_without_an_upsampler_loads_back_without_one(tmp_path, components):
    UPLiFTFlux2KleinPipeline(**components, upsampler=None).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["upsampler"] == [None, None]
    assert UPLiFTFlux2KleinPipeline.from_pretrained(tmp_path).upsampler is None


def test_save_load_round_trip(pipe, taef2, tmp_path):
    with_guide = with_components(pipe, upsampler=noisy_upsampler(), guide_vae=taef2)
    with_guide.save_pretrained(tmp_path)
    loaded = UPLiFTFlux2KleinPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.guide_vae).__name__ == "TAEF2" and loaded.upsampler.config.noise_channels > 0
    torch.testing.assert_close(run(loaded, output_type="pt").images, run(with_guide, output_type="pt").images)
    bf16 = UPLiFTFlux2KleinPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.transformer.dtype == bf16.upsampler.dtype == bf16.guide_vae.dtype == torch.bfloat16


# ---------------------------------------------------------------- outputs
def test_output_sizes(pipe, latents):
    out = run(pipe, upscale=2, return_low_res=True)
    assert isinstance(out, UPLiFTPipelineOutput)
    assert out.images[0].size == (128, 128) and out.low_res_images[0].size == (SIZE, SIZE)
    for upscale in (1, 4):
        images = pipe.upscale_flux2_latents(latents, upscale).images
        assert images[0].size == (SIZE * upscale, SIZE * upscale)


def test_np_non_square_and_tuple_output(pipe):
    images, low, nsfw = run(pipe, upscale=2, height=48, width=80, output_type="np", return_dict=False,
                             return_low_res=True)
    assert nsfw is None  # (images, low_res_images, nsfw_content_detected): every UPLiFT pipeline's tuple
    assert images.shape == (1, 96, 160, 3) and low.shape == (1, 48, 80, 3)
    assert images.min() >= 0 and images.max() <= 1


def test_upscale_1_is_plain_flux2(pipe, plain):
    # The raw latents UPLiFT sees are exactly what FLUX.2 decodes: at upscale=1 the two pipelines agree.
    expected = plain(prompt="a cat", generator=torch.Generator().manual_seed(0), output_type="pt", **TINY_CALL).images
    torch.testing.assert_close(run(pipe, upscale=1, output_type="pt").images, expected, atol=1e-5, rtol=0)


def test_latent_output_decodes_to_the_uncorrected_images(pipe, latents):
    lifted = pipe.upscale_flux2_latents(latents, 2, output_type="latent")
    assert lifted.images.shape == (1, 32, 16, 16) and lifted.low_res_images is latents
    uncorrected = pipe.upscale_flux2_latents(latents, 2, output_type="pt", color_correction=False).images
    torch.testing.assert_close(decode_latents(pipe.vae, lifted.images), uncorrected, atol=1e-5, rtol=0)


def test_colour_correction_comes_from_the_upsampler_config(pipe, latents):
    def images(p, **kwargs):
        return p.upscale_flux2_latents(latents, 2, output_type="pt", **kwargs).images

    default = images(pipe)  # built-in model: its config says "detail"
    torch.testing.assert_close(default, images(pipe, color_correction="detail"), atol=0, rtol=0)
    assert not torch.allclose(default, images(pipe, color_correction="mean"))
    mean_model = with_components(pipe, upsampler=noisy_upsampler())  # a model recording "mean" gets "mean"
    torch.testing.assert_close(images(mean_model, generator=torch.Generator().manual_seed(0)),
                               images(mean_model, generator=torch.Generator().manual_seed(0), color_correction="mean"))


# ---------------------------------------------------------------- the guide: decoded from the low-res latents
def _record_guides(pipe, monkeypatch):
    seen = []
    original = pipe.upsampler.encode_image

    def encode_image(image, *args, **kwargs):
        seen.append(image.clone())
        return original(image, *args, **kwargs)

    monkeypatch.setattr(pipe.upsampler, "encode_image", encode_image)
    return seen


def test_guide_is_the_low_res_decode_of_the_pipeline_vae(pipe, latents, monkeypatch):
    seen = _record_guides(pipe, monkeypatch)
    out = run(pipe, upscale=2, output_type="pt", return_low_res=True)
    expected = decode_latents(pipe.vae, latents)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], pipe.upsampler.normalize_image(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.low_res_images, expected, atol=1e-6, rtol=0)


def test_fast_guide_with_the_real_taef2(pipe, latents, taef2, monkeypatch):
    fast = with_components(pipe, guide_vae=taef2)
    seen = _record_guides(fast, monkeypatch)
    out = run(fast, upscale=2, output_type="pt", return_low_res=True)
    expected = decode_latents(taef2, latents)  # taef2's decode guides and is the colour reference
    torch.testing.assert_close(seen[0], fast.upsampler.normalize_image(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.low_res_images, expected, atol=1e-6, rtol=0)
    # the high-res decode is still the pipeline's VAE: uncorrected output = vae.decode(UPLiFT latents)
    uncorrected = fast.upscale_flux2_latents(latents, 2, output_type="pt", color_correction=False).images
    lifted = fast.upscale_flux2_latents(latents, 2, output_type="latent").images
    torch.testing.assert_close(uncorrected, decode_latents(pipe.vae, lifted), atol=1e-5, rtol=0)
    # upscale=1 decodes with the pipeline's VAE, never with the guide VAE
    torch.testing.assert_close(fast.upscale_flux2_latents(latents, 1, output_type="pt").images,
                               decode_latents(pipe.vae, latents), atol=1e-6, rtol=0)


def test_upscale_path_with_the_real_taef2_as_vae_equals_the_sr_pipeline(taef2, shared_dir):
    # The upscale path without a transformer, on a real photo: photo -> taef2 latents -> UPLiFT -> taef2 decode.
    # Guided by the photo itself it is the super-resolution pipeline's computation, to the bit; from the latents
    # alone (the generation case) the guide is taef2's decode of them.
    from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline

    from uplift_diffusion.builtin import load_builtin_upsampler
    from uplift_diffusion.utils.images import load_image

    photo = load_image(shared_dir / "data" / "photos" / "astronaut.png").resize((64, 64), PIL.Image.BICUBIC)
    image = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()
    upsampler = load_builtin_upsampler("taef2")
    upscale_only = UPLiFTFlux2KleinPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None,
                                            transformer=None, upsampler=upsampler)
    upscale_only.register_modules(vae=taef2)  # an upscale-only pipeline whose VAE is the real taef2
    upscale_only.set_progress_bar_config(disable=True)
    sr = UPLiFTSuperResolutionPipeline(vae=taef2, upsampler=upsampler)
    sr.set_progress_bar_config(disable=True)
    with torch.no_grad():
        latents = taef2.encode(image * 2 - 1).latents  # [1, 32, 8, 8]
    ours = upscale_only.upscale_flux2_latents(latents, 2, output_type="pt", low_res_images=image).images
    torch.testing.assert_close(ours, sr(photo, scale=2, output_type="pt").images, atol=0, rtol=0)
    from_latents = upscale_only.upscale_flux2_latents(latents, 2, output_type="pt")
    assert from_latents.images.shape == (1, 3, 128, 128)
    torch.testing.assert_close(from_latents.low_res_images, decode_latents(taef2, latents), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- batches and generators
def test_batch_equals_single_with_one_generator_per_image(pipe):
    noisy = with_components(pipe, upsampler=noisy_upsampler())
    batch = run(noisy, prompt=["a cat", "a dog"], upscale=2, output_type="pt",
                generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]).images
    single = run(noisy, prompt="a dog", upscale=2, output_type="pt", generator=torch.Generator().manual_seed(2))
    assert batch.shape == (2, 3, 128, 128)
    torch.testing.assert_close(batch[1:], single.images, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="generators"):
        run(noisy, prompt=["a cat", "a dog"], generator=[torch.Generator().manual_seed(1)])


def test_uplift_noise_comes_from_the_generator(pipe, latents):
    noisy = with_components(pipe, upsampler=noisy_upsampler())
    two = torch.cat([latents, latents.flip(-1)])

    def lift(x, generator):
        return noisy.upscale_flux2_latents(x, 2, generator, output_type="latent").images

    a, b = lift(latents, torch.Generator().manual_seed(5)), lift(latents, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, lift(latents, torch.Generator().manual_seed(6)))
    pair = lift(two, [torch.Generator().manual_seed(6), torch.Generator().manual_seed(5)])
    torch.testing.assert_close(pair[1:], lift(latents.flip(-1), torch.Generator().manual_seed(5)), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- every FLUX.2 argument works
@pytest.mark.parametrize("pipeline_class", [UPLiFTFlux2KleinPipeline, UPLiFTFlux2Pipeline])
def test_every_flux2_argument_is_passed_through(pipe, monkeypatch, pipeline_class):
    # Whatever the parent's __call__ accepts (also in later diffusers versions) reaches it unchanged.
    from diffusers.pipelines.flux2.pipeline_output import Flux2PipelineOutput

    parent = pipeline_class.__mro__[2]
    ours = pipeline_class(**{k: v for k, v in pipe.components.items() if k in
                             inspect.signature(pipeline_class.__init__).parameters})
    ours.set_progress_bar_config(disable=True)
    raw = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    received = {}

    def fake_call(self, **kwargs):
        received.update(kwargs)
        if pipeline_class is UPLiFTFlux2Pipeline:  # the dev pipeline hands out packed, normalised tokens
            bn = self.vae.bn
            patchified = (self._patchify_latents(raw) - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
                bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps)
            packed, _ = self.prepare_latents(1, 32, SIZE, SIZE, torch.float32, "cpu", None, patchified)
            return Flux2PipelineOutput(images=packed)
        return Flux2PipelineOutput(images=raw)

    names = [n for n in inspect.signature(parent.__call__).parameters
             if n not in ("self", "output_type", "return_dict", "generator")]
    sentinels = {name: object() for name in names}
    monkeypatch.setattr(parent, "__call__", fake_call)
    generator = torch.Generator().manual_seed(0)
    out = ours(upscale=2, generator=generator, output_type="latent", return_low_res=True, **sentinels)
    assert {n: received[n] for n in names} == sentinels
    assert received["generator"] is generator and received["output_type"] == "latent"
    assert {"image", "prompt", "sigmas", "latents", "prompt_embeds", "callback_on_step_end"} <= set(names)
    assert out.images.shape == (1, 32, 16, 16)
    torch.testing.assert_close(out.low_res_images, raw, atol=1e-5, rtol=0)  # dev: unpacked, de-normalised


@pytest.mark.parametrize("arguments", [
    {"num_images_per_prompt": 2},
    {"image": PIL.Image.new("RGB", (64, 64), (200, 40, 40)), "sigmas": [1.0, 0.6]},
], ids=["num_images_per_prompt", "reference_image_and_sigmas"])
def test_flux2_arguments_take_effect(pipe, plain, latents, arguments):
    ours = run(pipe, upscale=2, output_type="latent", return_low_res=True, **arguments).low_res_images
    expected = plain(prompt="a cat", generator=torch.Generator().manual_seed(0), output_type="latent",
                     **{**TINY_CALL, **arguments}).images
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)
    assert ours.shape[0] == 2 or not torch.equal(ours, latents)  # the argument changed the denoising


def test_callback_and_prompt_embeds(pipe, latents):
    seen = []

    def callback(p, step, timestep, kwargs):
        seen.append(kwargs["latents"].shape)
        return {}

    embeds, _ = pipe.encode_prompt("a cat", max_sequence_length=MAX_SEQUENCE_LENGTH,
                                   text_encoder_out_layers=TEXT_OUT_LAYERS)
    out = run(pipe, prompt=None, prompt_embeds=embeds, callback_on_step_end=callback, upscale=2,
              output_type="latent", return_low_res=True)
    assert len(seen) == STEPS and seen[0] == (1, 16, 128)  # packed tokens [B, h*w, 4*32] during denoising
    torch.testing.assert_close(out.low_res_images, latents, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- FLUX.2 [dev]: packed latent output
def test_dev_pipeline_matches_plain_flux2(tmp_path):
    from diffusers import Flux2Pipeline

    components = build_flux2_components(tmp_path)
    ours, plain = UPLiFTFlux2Pipeline(**components), Flux2Pipeline(**components)
    for p in (ours, plain):
        p.set_progress_bar_config(disable=True)
    embeds = torch.randn(1, 8, 48, generator=torch.Generator().manual_seed(0))  # no Mistral: embeddings given
    kwargs = dict(prompt_embeds=embeds, num_inference_steps=STEPS, height=SIZE, width=80, output_type="pt")
    expected = plain(generator=torch.Generator().manual_seed(0), **kwargs).images
    torch.testing.assert_close(ours(upscale=1, generator=torch.Generator().manual_seed(0), **kwargs).images,
                               expected, atol=1e-5, rtol=0)
    assert ours(upscale=2, generator=torch.Generator().manual_seed(0), **kwargs).images.shape == (1, 3, 128, 160)


# ---------------------------------------------------------------- decode tiling, errors
def test_vae_tiling_for_large_outputs(pipe, latents, monkeypatch):
    from uplift_diffusion.pipelines import flux2

    calls = []
    original = pipe.vae.tiled_decode
    monkeypatch.setattr(pipe.vae, "tiled_decode", lambda *a, **k: calls.append(1) or original(*a, **k))
    whole = pipe.upscale_flux2_latents(latents, 2, output_type="pt").images
    assert not calls and pipe.vae.use_tiling is False  # 128² <= TILED_DECODE_ABOVE: one decode
    monkeypatch.setattr(flux2, "TILED_DECODE_ABOVE", 100 * 100)
    tiled = pipe.upscale_flux2_latents(latents, 2, output_type="pt").images
    assert calls and pipe.vae.use_tiling is False  # tiled for this call only (the tiny VAE tiles 8-latent blocks)
    assert (tiled - whole).abs().mean() < 0.1 and not torch.equal(tiled, whole)
    calls.clear()
    torch.testing.assert_close(pipe.upscale_flux2_latents(latents, 2, output_type="pt", vae_tiling=False).images,
                               whole, atol=0, rtol=0)
    assert not calls


def test_clear_errors(pipe):
    from uplift_diffusion import TAEF2

    with pytest.raises(ValueError, match="upscale must be one of"):
        run(pipe, upscale=3)
    with pytest.raises(ValueError, match="output_type"):
        run(pipe, output_type="jpeg")
    sd_model = UPLiFTModel.from_preset("tiny-vae")  # 4 channels: an SD 1.5 upsampler
    with pytest.raises(ValueError, match="does not fit the vae"):
        run(with_components(pipe, upsampler=sd_model))
    wrong_guide = TAEF2(latent_channels=16, channels=8, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="guide_vae"):
        run(with_components(pipe, guide_vae=wrong_guide))
    with pytest.raises(ValueError, match="low_res"):
        pipe.upscale_flux2_latents(torch.zeros(1, 32, 8, 8), low_res_images=torch.zeros(1, 3, 32, 32))
    for bad in (torch.zeros(1, 4, 8, 8), torch.zeros(32, 8, 8), torch.zeros(1, 32, 0, 8)):  # channels, rank, size
        with pytest.raises(ValueError, match=r"latents must be raw FLUX.2 latents \[B, 32, h, w\]"):
            pipe.upscale_flux2_latents(bad)
    with pytest.raises(ValueError, match="negative_prompt_embeds is not an argument of UPLiFTFlux2Pipeline"):
        dev = UPLiFTFlux2Pipeline(**{k: v for k, v in pipe.components.items() if k != "is_distilled"})
        dev(prompt_embeds=torch.zeros(1, 4, 48), negative_prompt_embeds=torch.zeros(1, 4, 48))


def test_loading_errors_name_the_repo_and_the_way_out(tmp_path, monkeypatch, saved):
    from huggingface_hub import constants
    from uplift_diffusion.pipelines.flux2 import flux2_pipeline_class, load_flux2_pipeline

    from uplift_diffusion.utils.errors import InputError, InputNotFoundError, UnavailableError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnavailableError) as info:
        load_flux2_pipeline("black-forest-labs/FLUX.2-klein-4B")
    message = str(info.value)
    assert "'black-forest-labs/FLUX.2-klein-4B'" in message and "hf download" in message
    assert "local folder" in message and "--model DIR" in message and "\n" not in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="model_index.json"):
        load_flux2_pipeline(tmp_path / "empty")
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(InputError, match="not FLUX.2"):
        load_flux2_pipeline(tmp_path / "sd")
    assert flux2_pipeline_class(saved[0]) is UPLiFTFlux2KleinPipeline


# ---------------------------------------------------------------- the command line
def test_generate_family_flux2(tmp_path, capsys):
    from uplift_diffusion.cli import main

    # klein's default text layers; step-distilled as FLUX.2-klein-4B, so the CLI's default guidance is none
    folder = save_klein_pipeline(tmp_path / "klein", text_layers=CLI_TEXT_LAYERS, is_distilled=True)
    out = tmp_path / "gen.png"
    args = ["generate", "a cat", "-o", str(out), "--family", "flux2", "--model", str(folder), "--upscale", "2",
            "--steps", "1", "--height", "64", "--width", "48", "--save-low-res", "--fast-guide", "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    assert PIL.Image.open(out).size == (96, 128) and PIL.Image.open(tmp_path / "gen_lowres.png").size == (48, 64)
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--height", "40"], "multiple of 16"),
    (["--negative-prompt", "x"], "not supported by FLUX.2"),
    (["--model", "black-forest-labs/FLUX.2-klein-4B"], "'black-forest-labs/FLUX.2-klein-4B'"),
])
def test_generate_family_flux2_errors(tmp_path, capsys, monkeypatch, argv, message):
    from huggingface_hub import constants

    from uplift_diffusion.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    argv = ["generate", "a cat", "-o", str(tmp_path / "x.png"), "--family", "flux2", "--device", "cpu", *argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    if "FLUX.2-klein-4B" in message:
        assert "--model DIR" in err[0] and "hf download" in err[0]
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_generate_from_a_partial_flux2_download_is_one_line(tmp_path, capsys, damage):
    """A FLUX.2 folder with a component folder missing, or a weights file cut short (an interrupted download)."""
    import shutil

    from uplift_diffusion.cli import main

    folder = save_klein_pipeline(tmp_path / "klein", text_layers=CLI_TEXT_LAYERS, is_distilled=True)
    if damage == "missing":
        shutil.rmtree(folder / "transformer")
    else:
        weights = next((folder / "transformer").glob("*.safetensors"))
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = ["generate", "a cat", "-o", str(tmp_path / "x.png"), "--family", "flux2", "--model", str(folder),
            "--steps", "1", "--height", "64", "--width", "48", "--device", "cpu"]
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line]
    assert len(err) == 1 and str(folder) in err[0] and "hf download" in err[0], err
    assert ("transformer missing" in err[0]) if damage == "missing" else ("damaged or incomplete" in err[0])


# ---------------------------------------------------------------- eval coco / relaion on a FLUX.2 pipeline
def test_coco_benchmark_with_flux2_rows(pipe, tmp_path):
    from eval_helpers import SmallFeatures
    from uplift_diffusion.eval.coco import run_coco_benchmark
    from uplift_diffusion.eval.metrics import FID
    from uplift_diffusion.eval.text2img import default_rows, flux2_row, low_resolution

    from uplift_diffusion.utils.errors import StaleResultsError

    rng = np.random.default_rng(0)
    (tmp_path / "real").mkdir()
    for i in range(2):
        PIL.Image.fromarray(rng.integers(0, 256, (140, 150, 3), dtype=np.uint8)).save(tmp_path / "real" / f"{i}.png")
    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.png"} for i in range(2)],
                                       "annotations": [{"image_id": i, "caption": c}
                                                       for i, c in enumerate(["a cat", "a dog"])]}))
    assert low_resolution(pipe) == 1024  # FLUX.2's default: 1024 -> 2048 in the real benchmark
    text = {"max_sequence_length": MAX_SEQUENCE_LENGTH, "text_encoder_out_layers": TEXT_OUT_LAYERS}
    rows = default_rows(pipe, [STEPS], size=SIZE, guidance_scale=1.0, pipeline_kwargs=text)
    assert [r.key for r in rows] == ["flux2-2", "flux2-2-uplift"]
    assert rows[1].resolution == "64->128" and rows[1].params_m == pytest.approx(0.734145)
    assert "upsampler" in rows[1].fingerprint["components"] and "upsampler" not in rows[0].fingerprint["components"]

    def fid():
        return FID("torchmetrics", feature_extractor=SmallFeatures())

    def bench(rows):
        return run_coco_benchmark(annotations, tmp_path / "real", rows, tmp_path / "coco", num_samples=2,
                                  batch_size=1, fid_factory=fid, real_size=128, patch_size=64)

    first = bench(rows)
    assert set(first["metrics"]) == {"flux2-2", "flux2-2-uplift"}
    assert first["metrics"]["flux2-2-uplift"]["patch_fid"] >= 0 and first["metrics"]["flux2-2"]["patch_fid"] is None
    assert PIL.Image.open(tmp_path / "coco" / "images" / "flux2-2-uplift" / "00000.png").size == (128, 128)
    (tmp_path / "coco" / "images" / "flux2-2-uplift" / "00001.png").unlink()  # resume: only that image again
    second = bench(rows)
    assert {k: v for k, v in second.items() if k != "timings"} == {k: v for k, v in first.items() if k != "timings"}
    other = flux2_row(with_components(pipe, upsampler=noisy_upsampler()), STEPS, 2, 1.0, size=SIZE,
                      pipeline_kwargs=text)
    with pytest.raises(StaleResultsError):  # another upsampler: the saved images are not reused
        bench([rows[0], other])


def test_eval_coco_family_flux2_command(tmp_path, monkeypatch):
    # The command builds FLUX.2 rows at the pipeline's resolution (1024 -> 2048), the built-in upsampler, bf16 only
    # on CUDA; the benchmark itself (run_coco_benchmark) is the one tested above, replaced here by a recorder.
    from uplift_diffusion.eval import coco

    from uplift_diffusion.cli import main

    received = {}
    monkeypatch.setattr(coco, "run_coco_benchmark", lambda *args, **kwargs: received.update(kwargs) or {"ok": 1})
    folder = save_klein_pipeline(tmp_path / "klein", is_distilled=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "table.md").write_text("table\n")
    (tmp_path / "captions.json").write_text("{}")
    argv = ["eval", "coco", "--family", "flux2", "--pipeline", str(folder), "--annotations",
            str(tmp_path / "captions.json"), "--images", str(tmp_path), "--output", str(tmp_path / "out"),
            "--device", "cpu", "--fid-backend", "none"]
    assert main(argv) == 0
    rows = received["rows"]
    assert [r.key for r in rows] == ["flux2-4", "flux2-4-uplift"]  # distilled: 4 steps, no guidance
    assert rows[1].resolution == "1024->2048" and rows[1].fingerprint["guidance_scale"] == 1.0
    assert received["real_size"] == 2048 and received["patch_size"] == 1024
    assert received["extra_config"]["pipeline_source"] == str(folder)
    assert received["extra_config"]["upsampler_source"] == "built-in taef2"
    assert main([*argv, "--refine", "0.3", "--refine-steps", "8", "--no-baseline"]) == 0  # + UPLiFT + refine
    rows = received["rows"]
    assert [(r.key, r.method) for r in rows] == [("flux2-4-uplift", "UPLiFT"),
                                                 ("flux2-4-uplift-refine0.3-8steps", "UPLiFT + refine 0.3 (8 steps)")]
    assert rows[1].fingerprint == dict(rows[0].fingerprint, refine_strength=0.3, refine_steps=8)
