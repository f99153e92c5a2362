"""diffusers conformance of the UPLiFT pipelines, by diffusers' own pipeline tests: the mixins of its
``tests/pipelines/test_pipelines_common.py`` (``../shared/third_party/diffusers-tests``, tag v0.40.0, see its
SOURCE.md), configured as diffusers configures ``StableDiffusionPipelineFastTests``, ``Flux2KleinPipelineFastTests``,
``Flux2PipelineFastTests`` and (for super-resolution) ``LTXLatentUpsamplePipelineFastTests``, with this project's tiny
components. A mixin check that needs an accelerator skips on a CPU (diffusers' own markers); the few that cannot
hold by design are skipped here with the reason.

Then the checks the mixins do not make (or make only on an accelerator): bf16 against fp32, model and sequential CPU
offload equal to the plain run, a callback's latents upscaled, the order of num_images_per_prompt x batch, from_pipe
both ways, pinned output slices of the tiny components.

Offload on a CPU-only machine: diffusers 0.42 refuses ``enable_*_cpu_offload()`` without an accelerator unless a
device is named, so these run with ``device="cpu"`` there (a GPU where there is one): model offload's hooks are
installed and run as on a GPU. Sequential offload onto the CPU fails inside accelerate for diffusers' own pipelines
too (see SEQUENTIAL); UPLiFTModel with its weights on the meta device is tested in tests/test_cpu_backend.py.
"""

import copy
import functools
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import diffusers
import pytest
import torch
from tiny_flux2 import (
    MAX_SEQUENCE_LENGTH,
    TEXT_OUT_LAYERS,
    build_flux2_components,
    build_klein_components,
    build_mistral3_text_encoder,
    build_tokenizer,
)
from tiny_sd import build_components, build_pipeline
from uplift_diffusion.pipelines import (
    UPLiFTFlux2KleinPipeline,
    UPLiFTFlux2Pipeline,
    UPLiFTPipeline,
    UPLiFTSuperResolutionPipeline,
)

from uplift_diffusion import TAEF2, UPLiFTModel

try:
    from diffusers_tests.pipelines.pipeline_params import (
        TEXT_TO_IMAGE_BATCH_PARAMS,
        TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS,
        TEXT_TO_IMAGE_IMAGE_PARAMS,
        TEXT_TO_IMAGE_PARAMS,
    )
    from diffusers_tests.pipelines.test_pipelines_common import (
        IPAdapterTesterMixin,
        PipelineKarrasSchedulerTesterMixin,
        PipelineLatentTesterMixin,
        PipelineTesterMixin,
    )
except ModuleNotFoundError as err:  # ../shared absent, or a test-only package of the dev extra missing
    if os.environ.get("UPLIFT_REQUIRE_SHARED") == "1":
        raise
    pytest.skip(f"diffusers' pipeline test mixins not importable ({err})", allow_module_level=True)

# Reasons for the mixin checks skipped by design (each names the difference).
TEXT_ENCODER_DROPPED = ("by design: the check drops every component but the text encoder and calls "
                        "pipe.encode_prompt, then compares with a pipeline without text encoders; diffusers skips it "
                        "for FLUX.2 klein too ('Needs to be revisited')")


@functools.cache
def _tiny_sd_components() -> dict:
    folder = Path(tempfile.mkdtemp(prefix="uplift_mixin_sd_"))
    return build_components(folder)


def _default_batch_norm(components: dict) -> dict:
    """The FLUX.2 VAE with its batch-norm statistics at their defaults (mean 0, variance 1), as in diffusers' own
    dummy components: the callback check zeroes the denoiser's latents and expects zero latents out, which holds for
    the de-normalised latents only then (tests/test_pipeline_flux2.py checks the de-normalisation itself)."""
    components["vae"].bn.reset_running_stats()
    return components


@functools.cache
def _tiny_klein_components() -> dict:
    return _default_batch_norm(build_klein_components(Path(tempfile.mkdtemp(prefix="uplift_mixin_klein_"))))


@functools.cache
def _tiny_dev_components() -> dict:
    components = build_flux2_components(Path(tempfile.mkdtemp(prefix="uplift_mixin_dev_")))
    tokenizer = build_tokenizer()
    return _default_batch_norm({**components, "tokenizer": tokenizer,
                                "text_encoder": build_mistral3_text_encoder(len(tokenizer))})


def tiny_upsampler(in_channels: int = 4) -> UPLiFTModel:
    torch.manual_seed(0)
    return UPLiFTModel.from_preset("tiny-vae", in_channels=in_channels).eval()


class UPLiFTMixinCase:
    """What every configuration shares: fresh copies of the cached tiny components for each ``get_dummy_components``
    (the mixins change components in place), a CPU generator, and the ``upscale=1`` variant for the checks of the
    denoiser's own latent output."""

    denoiser_latents_only = False  # set by the checks that compare the denoiser's latents

    def tiny_components(self) -> dict:
        raise NotImplementedError

    def get_dummy_components(self):
        return copy.deepcopy(self.tiny_components())

    def call_inputs(self) -> dict:
        raise NotImplementedError

    def get_dummy_inputs(self, device, seed=0):
        inputs = {**self.call_inputs(), "generator": torch.Generator("cpu").manual_seed(seed)}
        if self.denoiser_latents_only:
            inputs["upscale"] = 1
        return inputs

    def test_callback_inputs(self):
        """The mixin's check zeroes the latents at the last step and expects zero latents out: true of the
        denoiser's latents (upscale=1); with upscale > 1 the output is UPLiFT's upscaling of them."""
        self.denoiser_latents_only = True
        super().test_callback_inputs()


class TestUPLiFTPipelineMixins(UPLiFTMixinCase, IPAdapterTesterMixin, PipelineLatentTesterMixin,
                               PipelineKarrasSchedulerTesterMixin, PipelineTesterMixin, unittest.TestCase):
    """As diffusers' StableDiffusionPipelineFastTests (v0.39.0), with tests/tiny_sd.py's components and a tiny
    upsampler."""

    pipeline_class = UPLiFTPipeline
    params = TEXT_TO_IMAGE_PARAMS
    batch_params = TEXT_TO_IMAGE_BATCH_PARAMS
    image_params = TEXT_TO_IMAGE_IMAGE_PARAMS
    image_latents_params = TEXT_TO_IMAGE_IMAGE_PARAMS
    callback_cfg_params = TEXT_TO_IMAGE_CALLBACK_CFG_PARAMS
    test_layerwise_casting = True
    test_group_offloading = True

    def tiny_components(self):
        return {**_tiny_sd_components(), "upsampler": tiny_upsampler(), "safety_checker": None,
                "feature_extractor": None, "image_encoder": None, "requires_safety_checker": False}

    def call_inputs(self):
        # 32x32 pixels (4x4 latents), the smallest the tiny UNet's two levels take: the mixins call it ~150 times.
        return {"prompt": "a cat", "num_inference_steps": 2, "guidance_scale": 6.0, "height": 32, "width": 32,
                "output_type": "np"}

    def test_attention_slicing_forward_pass(self):
        super().test_attention_slicing_forward_pass(expected_max_diff=3e-3)

    def test_inference_batch_single_identical(self):
        super().test_inference_batch_single_identical(expected_max_diff=3e-3)

    def test_encode_prompt_works_in_isolation(self):
        # The check reads encode_prompt's return names from `diffusers.pipelines.<class name>`, which knows only
        # diffusers' own classes: this one is put there for the duration.
        extra_required_param_value_dict = {"device": "cpu", "do_classifier_free_guidance": True}
        with mock.patch.object(diffusers.pipelines, self.pipeline_class.__name__, self.pipeline_class, create=True):
            super().test_encode_prompt_works_in_isolation(extra_required_param_value_dict)


class _SuperResolutionMixins(UPLiFTMixinCase, PipelineTesterMixin):
    """As diffusers' LTXLatentUpsamplePipelineFastTests (v0.40.0), the nearest analogue of a latent upsampler."""

    pipeline_class = UPLiFTSuperResolutionPipeline
    params = frozenset({"image", "generator"})
    batch_params = frozenset({"image", "generator"})
    required_optional_params = frozenset({"generator", "latents", "return_dict", "output_type"})
    test_xformers_attention = False
    test_attention_slicing = False  # no attention processors (diffusers' attention slicing is the UNet's)

    def call_inputs(self):
        torch.manual_seed(3)
        return {"image": torch.rand(1, 3, 32, 32), "scale": 2, "output_type": "np"}

    def test_inference_batch_single_identical(self):
        # No denoising steps to copy into the batched call (the mixin's default copies num_inference_steps).
        self._test_inference_batch_single_identical(batch_size=3, additional_params_copy_to_batched_inputs=[])

    def test_latents_input_equals_image_input(self):
        """``latents`` (the VAE's raw latents) give what the image they decode to gives when it encodes to them."""
        from uplift_diffusion.pipelines import super_resolution

        from uplift_diffusion.backbones.vae import decode_latents, encode_latents

        pipe = self.pipeline_class(**self.get_dummy_components())
        pipe.set_progress_bar_config(disable=True)
        latents = encode_latents(pipe.vae, self.call_inputs()["image"])
        by_latents = pipe(**{**self.get_dummy_inputs("cpu"), "image": None, "latents": latents})[0]
        with mock.patch.object(super_resolution, "encode_latents", lambda vae, image: latents):
            by_image = pipe(**{**self.get_dummy_inputs("cpu"), "image": decode_latents(pipe.vae, latents)})[0]
        assert by_latents.shape == (1, 64, 64, 3)
        assert abs(by_latents - by_image).max() == 0
        with pytest.raises(ValueError, match="either image or latents"):
            pipe(**{**self.get_dummy_inputs("cpu"), "latents": latents})
        with pytest.raises(ValueError, match="raw latents"):
            pipe(latents=latents[:, :2], scale=2)


class TestSuperResolutionAutoencoderKLMixins(_SuperResolutionMixins, unittest.TestCase):
    def tiny_components(self):
        return {"vae": _tiny_sd_components()["vae"], "upsampler": tiny_upsampler()}


class TestSuperResolutionTAEF2Mixins(_SuperResolutionMixins, unittest.TestCase):
    def tiny_components(self):
        torch.manual_seed(0)
        vae = TAEF2(latent_channels=32, channels=8, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1)).eval()
        return {"vae": vae, "upsampler": tiny_upsampler(32)}


class _Flux2Mixins(UPLiFTMixinCase, PipelineTesterMixin):
    """As diffusers' Flux2KleinPipelineFastTests / Flux2PipelineFastTests (v0.39.0), with tests/tiny_flux2.py's
    components (an 8x, 32-channel VAE: 32x32 pixels are 2x2 transformer tokens) and a tiny upsampler."""

    params = frozenset(["prompt", "height", "width", "guidance_scale", "prompt_embeds"])
    batch_params = frozenset(["prompt"])
    test_xformers_attention = False
    test_layerwise_casting = True
    test_group_offloading = True
    supports_dduf = False

    def call_inputs(self):
        return {"prompt": "a dog is dancing", "num_inference_steps": 2, "guidance_scale": 4.0, "height": 32,
                "width": 32, "max_sequence_length": MAX_SEQUENCE_LENGTH, "output_type": "np",
                "text_encoder_out_layers": TEXT_OUT_LAYERS}

    @unittest.skip(TEXT_ENCODER_DROPPED)
    def test_encode_prompt_works_in_isolation(self):
        pass


class TestFlux2KleinMixins(_Flux2Mixins, unittest.TestCase):
    pipeline_class = UPLiFTFlux2KleinPipeline

    def tiny_components(self):
        return {**_tiny_klein_components(), "upsampler": tiny_upsampler(32), "guide_vae": None}


class TestFlux2Mixins(_Flux2Mixins, unittest.TestCase):
    pipeline_class = UPLiFTFlux2Pipeline

    def tiny_components(self):
        return {**_tiny_dev_components(), "upsampler": tiny_upsampler(32), "guide_vae": None}


# ---------------------------------------------------------------- checks the mixins do not make
STEPS = 2
# bf16 (8-bit mantissa) through a whole pipeline, images in [0, 1]: max |bf16 - fp32| (diffusers' fp16 check: 5e-2
# on its tiny components; ours decode twice and run UPLiFT in between).
BF16_MAX_DIFF = 0.1
# Batching changes the summation order of the convs only.
BATCH = dict(rtol=1e-4, atol=1e-4)
# The accelerator the offload hooks load weights onto: a GPU where there is one, else the CPU itself.
OFFLOAD_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Sequential offload onto the CPU fails in accelerate for diffusers' own StableDiffusionPipeline with these components
# too (set_module_tensor_to_device re-wraps a parameter: "new() received an invalid combination of arguments ...
# requires_grad"). UPLiFTModel itself under sequential offload:
# tests/test_cpu_backend.py::test_weights_on_the_meta_device_until_called.
SEQUENTIAL = pytest.param("enable_sequential_cpu_offload", marks=pytest.mark.xfail(
    OFFLOAD_DEVICE == "cpu", strict=True, raises=(TypeError, NotImplementedError),
    reason="sequential offload onto the CPU: accelerate's re-offload TypeError"))


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# ---------------------------------------------------------------- UPLiFTSuperResolutionPipeline (real TAEF2)
@pytest.fixture(scope="module")
def sr_folder(shared_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sr_pipeline")
    torch.manual_seed(0)
    upsampler = UPLiFTModel.from_preset("tiny-vae", in_channels=32).eval()
    pipe = UPLiFTSuperResolutionPipeline(vae=TAEF2.from_pretrained(shared_dir / "weights" / "taef2"),
                                         upsampler=upsampler)
    pipe.save_pretrained(folder)
    return folder


def load_sr(folder, **kwargs):
    pipe = UPLiFTSuperResolutionPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sr(sr_folder):
    return load_sr(sr_folder)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 32, 48)


def sr_run(pipe, image, seeds=(0,), **kwargs):
    kwargs.setdefault("output_type", "pt")
    return pipe(image, scale=2, generator=gens(*seeds), **kwargs)


def test_sr_bf16_within_tolerance_of_fp32(sr, sr_folder, images):
    bf16 = load_sr(sr_folder, torch_dtype=torch.bfloat16)
    assert bf16.vae.dtype == bf16.upsampler.dtype == torch.bfloat16
    fp32, low = sr_run(sr, images[:1]).images, sr_run(bf16, images[:1]).images
    assert (low.float() - fp32).abs().max().item() < BF16_MAX_DIFF


@pytest.mark.parametrize("offload", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_sr_cpu_offload_equals_plain_run(sr_folder, images, offload):
    plain = sr_run(load_sr(sr_folder), images[:1]).images
    pipe = load_sr(sr_folder)
    getattr(pipe, offload)(device=OFFLOAD_DEVICE)
    if offload == "enable_sequential_cpu_offload":
        assert pipe.upsampler.encoder.block_0.blocks[0].conv[0].weight.device.type == "meta"
        assert next(pipe.vae.parameters()).device.type == "meta"
    else:
        assert len(pipe._all_hooks) == 2  # vae and upsampler, in model_cpu_offload_seq order
    for _ in range(2):  # the hooks are re-armed after a call (maybe_free_model_hooks)
        torch.testing.assert_close(sr_run(pipe, images[:1]).images.cpu(), plain, rtol=1e-4, atol=1e-4)


def test_sr_pinned_slice(sr, images):
    """A regression anchor: fixed weights (seed 0 upsampler, the shipped taef2), fixed inputs and noise."""
    out = sr_run(sr, images[:1]).images
    assert out.shape == (1, 3, 64, 96)
    got = out[0, :, -1, -4:].flatten()
    torch.testing.assert_close(got, SR_SLICE, rtol=0, atol=1e-4)


# Recorded on AMD EPYC (AVX-512, native bf16) with fast paths on; the same to 2e-7 under the AVX2 limit with them off.
SR_SLICE = torch.tensor([0.51399, 0.51208, 0.51837, 0.51954, 0.50813, 0.50561, 0.51547, 0.50828, 0.50301, 0.50096,
                         0.50417, 0.50210])


# ---------------------------------------------------------------- UPLiFTPipeline (tiny SD 1.5-shaped components)
@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2i")
    pipe = build_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder / "pipeline", pipe


def t2i_run(pipe, prompt="a cat", seeds=(0,), **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "pt")
    kwargs.setdefault("upscale", 2)
    return pipe(prompt, generator=gens(*seeds), **kwargs)


def test_t2i_batch_and_images_per_prompt_equal_single_runs(t2i):
    _, pipe = t2i
    out = t2i_run(pipe, ["a cat", "a dog"], seeds=(0, 1, 2, 3), num_images_per_prompt=2).images
    assert out.shape == (4, 3, 128, 128)
    for i, prompt in enumerate(["a cat", "a cat", "a dog", "a dog"]):  # diffusers' order: images of prompt 0 first
        torch.testing.assert_close(out[i : i + 1], t2i_run(pipe, prompt, seeds=(i,)).images, **BATCH)


def test_t2i_bf16_within_tolerance_of_fp32(t2i):
    """bf16 through denoising, two decodes and UPLiFT. Measured: max 0.20 / mean 0.007 (the tiny random SD alone,
    upscale=1: 0.04 / 0.003); the untrained upsampler's random attention logits amplify bf16 rounding at a few
    pixels, so the check bounds the mean tightly and the maximum loosely."""
    folder, pipe = t2i
    bf16 = UPLiFTPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    bf16.set_progress_bar_config(disable=True)
    assert bf16.unet.dtype == bf16.upsampler.dtype == torch.bfloat16
    diff = (t2i_run(bf16).images.float() - t2i_run(pipe).images).abs()
    assert diff.mean().item() < 0.02 and diff.max().item() < 0.25


@pytest.mark.parametrize("offload", ["enable_model_cpu_offload", SEQUENTIAL])
def test_t2i_cpu_offload_equals_plain_run(t2i, offload):
    folder, plain_pipe = t2i
    plain = t2i_run(plain_pipe).images
    pipe = UPLiFTPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    getattr(pipe, offload)(device=OFFLOAD_DEVICE)
    if offload == "enable_sequential_cpu_offload":
        assert pipe.upsampler.attender.conv1.weight.device.type == "meta"
    for _ in range(2):
        torch.testing.assert_close(t2i_run(pipe).images.cpu(), plain, rtol=1e-4, atol=1e-4)


def test_t2i_callback_modifies_latents(t2i):
    """A callback's latents replace the pipeline's: the UPLiFT stage upscales what the callback returned."""
    _, pipe = t2i
    fixed = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))

    def replace_at_last_step(p, step, timestep, kwargs):
        return {"latents": fixed.clone()} if step == p.num_timesteps - 1 else {}

    outs = [t2i_run(pipe, prompt, output_type="latent", callback_on_step_end=replace_at_last_step,
                    callback_on_step_end_tensor_inputs=["latents"]).images for prompt in ("a cat", "a dog")]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)  # the prompt no longer matters
    assert not torch.equal(outs[0], t2i_run(pipe, output_type="latent").images)
    halved = t2i_run(pipe, upscale=1, output_type="latent",
                     callback_on_step_end=lambda p, i, t, kw: {"latents": kw["latents"] * 0.5}
                     if i == p.num_timesteps - 1 else {}).images
    torch.testing.assert_close(halved, 0.5 * t2i_run(pipe, upscale=1, output_type="latent").images)


def test_t2i_pinned_slice(t2i):
    _, pipe = t2i
    out = t2i_run(pipe).images
    got = out[0, :, -1, -4:].flatten()
    torch.testing.assert_close(got, T2I_SLICE, rtol=0, atol=1e-4)


T2I_SLICE = torch.tensor([0.46678, 0.42428, 0.43022, 0.48766, 0.43927, 0.45388, 0.42468, 0.41806, 0.47849, 0.49502,
                          0.50019, 0.52260])


def test_t2i_from_pipe_both_ways(t2i):
    """UPLiFTPipeline -> StableDiffusionPipeline -> UPLiFTPipeline shares the modules and gives the same images."""
    from diffusers import StableDiffusionPipeline

    _, pipe = t2i
    sd = StableDiffusionPipeline.from_pipe(pipe)
    assert sd.unet is pipe.unet and sd.vae is pipe.vae and "upsampler" not in sd.components
    back = UPLiFTPipeline.from_pipe(sd, upsampler=pipe.upsampler)
    back.set_progress_bar_config(disable=True)
    assert back.unet is pipe.unet and back.vae is pipe.vae and back.text_encoder is pipe.text_encoder
    torch.testing.assert_close(t2i_run(back).images, t2i_run(pipe).images, rtol=0, atol=0)


def test_upsampler_is_not_copied_by_reference(t2i):
    """copy.deepcopy of a pipeline (what users do to compare settings) keeps working with the backend's caches."""
    _, pipe = t2i
    twin = copy.deepcopy(pipe)
    torch.testing.assert_close(t2i_run(twin).images, t2i_run(pipe).images, rtol=0, atol=0)
