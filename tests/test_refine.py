"""The refine pass in one call ("hires fix"): refine_strength / refine_steps of UPLiFTPipeline and of the FLUX.2
pipelines, and the CLI's `generate --refine`, with the tiny components (tests/tiny_sd.py, tests/tiny_flux2.py)."""

import pytest
import torch
from PIL import Image
from tiny_flux2 import MAX_SEQUENCE_LENGTH, TEXT_OUT_LAYERS, build_klein_components
from tiny_sd import build_pipeline
from uplift_diffusion.pipelines.common import record_stage_times

from uplift_diffusion.cli import main

STEPS = 2
SIZE = 32  # the low resolution: 4x4 latents, 64x64 output at upscale 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refine")
    pipe = build_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder / "pipeline", pipe


def run(pipe, seed=0, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "output_type": "pt", **kwargs}
    return pipe("a cat", generator=torch.Generator().manual_seed(seed), **kwargs)


def test_strength_zero_is_no_refine_bit_for_bit(saved):
    _, pipe = saved
    plain = run(pipe).images
    assert torch.equal(run(pipe, refine_strength=0.0).images, plain)
    assert torch.equal(run(pipe, refine_strength=0, refine_steps=7).images, plain)


def test_a_seeded_refine_is_reproducible_and_changes_the_image(saved):
    _, pipe = saved
    refined = run(pipe, refine_strength=0.5, refine_steps=4, return_low_res=True)
    again = run(pipe, refine_strength=0.5, refine_steps=4)
    assert refined.images.shape == (1, 3, 2 * SIZE, 2 * SIZE) and refined.low_res_images.shape[-1] == SIZE
    assert torch.equal(refined.images, again.images)
    assert not torch.equal(refined.images, run(pipe).images)
    assert not torch.equal(refined.images, run(pipe, seed=1, refine_strength=0.5, refine_steps=4).images)
    latents = run(pipe, refine_strength=0.5, refine_steps=4, output_type="latent").images
    assert latents.shape == (1, 4, 2 * SIZE // 8, 2 * SIZE // 8)


def test_callbacks_fire_in_both_passes(saved):
    _, pipe = saved
    seen = []

    def callback(p, step, timestep, kwargs):
        seen.append((type(p).__name__, tuple(kwargs["latents"].shape[-2:])))
        return {}

    run(pipe, refine_strength=0.5, refine_steps=4, callback_on_step_end=callback)
    first = [s for s in seen if s[0] == "UPLiFTPipeline"]
    second = [s for s in seen if s[0] == "StableDiffusionImg2ImgPipeline"]
    assert len(first) >= STEPS and set(shape for _, shape in first) == {(SIZE // 8, SIZE // 8)}
    # About 4 steps x strength 0.5 (PNDM adds its warm-up step), at the output size, after the first pass.
    assert 2 <= len(second) <= 3 and set(shape for _, shape in second) == {(2 * SIZE // 8, 2 * SIZE // 8)}
    assert seen[:len(first)] == first


def test_stage_times(saved):
    _, pipe = saved
    with record_stage_times() as refined:
        refined_images = run(pipe, refine_strength=0.5, refine_steps=4).images
    with record_stage_times() as plain:
        run(pipe)
    with record_stage_times() as base:
        run(pipe, upscale=1)
    assert set(refined) == {"base", "uplift", "refine", "decode"} and all(v > 0 for v in refined.values())
    assert set(plain) == {"base", "uplift", "decode"} and all(v > 0 for v in plain.values())
    assert set(base) == {"base", "decode"}  # without UPLiFT the low-res decode is the output
    assert torch.equal(run(pipe, refine_strength=0.5, refine_steps=4).images, refined_images)  # timing changes nothing


def test_bad_refine_arguments(saved):
    _, pipe = saved
    for kwargs, message in (({"refine_strength": 1.5}, "refine_strength"), ({"refine_strength": -0.1},
                            "refine_strength"), ({"refine_strength": 0.3, "refine_steps": 0}, "refine_steps")):
        with pytest.raises(ValueError, match=message):
            run(pipe, **kwargs)


def test_cli_generate_refine(saved, tmp_path, capsys):
    folder, _ = saved
    base = ["generate", "a cat", "--model", str(folder), "--steps", "2", "--height", str(SIZE), "--width", str(SIZE)]
    assert main([*base, "-o", str(tmp_path / "a.png"), "--refine", "0.5", "--refine-steps", "4"]) == 0
    assert main([*base, "-o", str(tmp_path / "b.png"), "--refine", "0.5", "--refine-steps", "4"]) == 0
    assert main([*base, "-o", str(tmp_path / "plain.png")]) == 0
    a, b, plain = (Image.open(tmp_path / f"{n}.png") for n in ("a", "b", "plain"))
    assert a.size == (2 * SIZE, 2 * SIZE) and a.tobytes() == b.tobytes() and a.tobytes() != plain.tobytes()
    capsys.readouterr()
    assert main([*base, "-o", str(tmp_path / "c.png"), "--refine", "2"]) == 2
    assert "--refine must be a strength in [0, 1]" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "c.png"), "--refine-steps", "3"]) == 2
    assert "--refine-steps needs --refine" in capsys.readouterr().err


# ---------------------------------------------------------------- FLUX.2 (klein; dev shares the code)
@pytest.fixture(scope="module")
def klein(tmp_path_factory):
    from uplift_diffusion.pipelines import UPLiFTFlux2KleinPipeline

    pipe = UPLiFTFlux2KleinPipeline(**build_klein_components(tmp_path_factory.mktemp("klein")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_klein(pipe, seed=0, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "guidance_scale": 1.0, "height": SIZE, "width": SIZE,
              "max_sequence_length": MAX_SEQUENCE_LENGTH, "text_encoder_out_layers": TEXT_OUT_LAYERS,
              "output_type": "pt", **kwargs}
    return pipe(prompt="a cat", generator=torch.Generator().manual_seed(seed), **kwargs)


def test_flux2_refine(klein):
    plain = run_klein(klein).images
    assert torch.equal(run_klein(klein, refine_strength=0.0, refine_steps=5).images, plain)
    seen = []

    def callback(p, step, timestep, kwargs):
        seen.append(tuple(kwargs["latents"].shape))
        return {}

    refined = run_klein(klein, refine_strength=0.5, refine_steps=4, callback_on_step_end=callback).images
    assert refined.shape == plain.shape == (1, 3, 2 * SIZE, 2 * SIZE)
    assert torch.equal(refined, run_klein(klein, refine_strength=0.5, refine_steps=4).images)
    assert not torch.equal(refined, plain)
    tokens = (SIZE // 16) ** 2  # packed 2x2 latents at the low resolution
    assert seen == [(1, tokens, 128)] * STEPS + [(1, 4 * tokens, 128)] * 2  # 4 steps x 0.5 at the output size
    with record_stage_times() as seconds:
        run_klein(klein, refine_strength=0.5, refine_steps=4)
    assert set(seconds) == {"base", "uplift", "refine", "decode"} and all(v > 0 for v in seconds.values())
    latents = run_klein(klein, refine_strength=0.5, refine_steps=4, output_type="latent", return_low_res=True)
    assert latents.images.shape == (1, 32, 2 * SIZE // 8, 2 * SIZE // 8)
    assert latents.low_res_images.shape == (1, 32, SIZE // 8, SIZE // 8)
