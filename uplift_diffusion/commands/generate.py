"""``uplift-diffusion generate "prompt" --upscale 2 -o out.png``: Stable Diffusion 1.5 + UPLiFT text-to-image, or
FLUX.2 + UPLiFT with ``--family flux2`` (e.g. 1024² generations -> 2048² images)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from uplift_diffusion.commands import checks
from uplift_diffusion.commands.checks import SEED_RANGE, float_in, int_in
from uplift_diffusion.commands.loading import (
    DEFAULT_FLUX2_REPO,
    DEFAULT_SD_REPO,
    DEFAULT_UPSAMPLER,
    add_color_correction_arguments,
    add_device_arguments,
    add_refine_arguments,
    color_correction_argument,
)

HELP = "Generate an image with Stable Diffusion 1.5 (or FLUX.2) and upscale it in latent space with UPLiFT."
FAMILIES = ("sd15", "flux2")
SD15_STEPS, SD15_GUIDANCE = 50, 7.5  # FLUX.2's defaults depend on the checkpoint: pipelines.flux2.flux2_defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="text prompt")
    parser.add_argument("-o", "--output", required=True, help="output image file (.png, .jpg, ...)")
    parser.add_argument("--family", default="sd15", choices=FAMILIES,
                        help="model family: sd15 (Stable Diffusion 1.5, default) or flux2 (FLUX.2 klein / dev)")
    parser.add_argument("--upscale", type=int, default=2, choices=(1, 2, 4, 8), help="UPLiFT upscaling (default 2)")
    parser.add_argument("--model", default=None,
                        help=f"the pipeline: Hub repo id or local folder (default {DEFAULT_SD_REPO}; with --family "
                             f"flux2 {DEFAULT_FLUX2_REPO})")
    parser.add_argument("--upsampler", default=None,
                        help="UPLiFT weights (repo id, file or folder); default: the model folder's own upsampler if "
                             f"it has one, else {DEFAULT_UPSAMPLER} (sd15) or the built-in taef2 model (flux2, "
                             f"offline)")
    parser.add_argument("--fast-guide", action="store_true",
                        help="flux2: decode the low-resolution guide image with the built-in taef2 instead of the "
                             "FLUX.2 VAE (faster; the guide and colour reference then come from taef2)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (sd15)")
    parser.add_argument("--steps", type=int_in(None, 10000), default=None,
                        help=f"denoising steps (default: sd15 {SD15_STEPS}; flux2 4 for step-distilled checkpoints "
                             f"such as FLUX.2-klein-4B, else 50)")
    parser.add_argument("--guidance-scale", type=float_in(0, 100), default=None,
                        help=f"classifier-free guidance (default: sd15 {SD15_GUIDANCE}; flux2 1.0 (none) for "
                             f"step-distilled checkpoints, else 4.0)")
    parser.add_argument("--height", type=int_in(None, 16384), default=None,
                        help="low-resolution height (default: the model's, 512 for sd15, 1024 for flux2)")
    parser.add_argument("--width", type=int_in(None, 16384), default=None,
                        help="low-resolution width (default: the model's, 512 for sd15, 1024 for flux2)")
    parser.add_argument("--seed", type=int_in(*SEED_RANGE), default=0, help="random seed (default 0)")
    parser.add_argument("--save-low-res", action="store_true", help="also save <output>_lowres.<ext>")
    add_color_correction_arguments(parser)
    add_refine_arguments(parser, "a refine pass at the output size: noise the upscaled latents to this strength in "
                                 "[0, 1] and denoise again with the same prompt (0, the default: off; try 0.3)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device_arguments(parser)


def _has_upsampler(model: str) -> bool:
    index = Path(model) / "model_index.json"
    return index.is_file() and "upsampler" in json.loads(index.read_text())


def load_pipeline(model: str, upsampler: str | None, dtype):
    from uplift_diffusion.commands.loading import check_model_source, load_local_pipeline, load_upsampler
    from uplift_diffusion.pipelines import UPLiFTPipeline
    from uplift_diffusion.utils.errors import UnavailableError
    from uplift_diffusion.utils.hub import ensure_hub_reachable

    check_model_source(model, "--model")  # before the upsampler's weights load
    kwargs = {}
    if upsampler is not None or not _has_upsampler(model):
        kwargs["upsampler"] = load_upsampler(upsampler or DEFAULT_UPSAMPLER, dtype)
    if Path(model).is_dir():
        return load_local_pipeline(lambda: UPLiFTPipeline.from_pretrained(model, dtype=dtype, **kwargs), model)
    ensure_hub_reachable()
    try:
        return UPLiFTPipeline.from_pretrained(model, dtype=dtype, **kwargs)
    except OSError as err:  # the Hub's errors (no network, missing repo / file) are OSErrors
        raise UnavailableError(f"could not load the Stable Diffusion pipeline {model!r} from the Hugging Face Hub "
                               f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); if "
                               f"this machine is offline, download it elsewhere (`hf download {model}`) and pass the "
                               f"local folder with --model DIR") from None


def load_flux2(model: str, upsampler: str | None, fast_guide: bool, dtype):
    """An UPLiFT FLUX.2 pipeline (klein or dev, told by the folder's / repo's model_index.json); offline the error
    names the repo and says to pass a local folder with --model DIR."""
    from uplift_diffusion.builtin import load_builtin_vae
    from uplift_diffusion.commands.loading import load_local_pipeline, load_upsampler
    from uplift_diffusion.pipelines.flux2 import flux2_pipeline_class, load_flux2_pipeline

    flux2_pipeline_class(model)  # a FLUX.2 pipeline that can be fetched, before any weights load
    load = lambda: load_flux2_pipeline(  # noqa: E731
        model, upsampler=load_upsampler(upsampler, dtype) if upsampler else None,
        guide_vae=load_builtin_vae("taef2", dtype) if fast_guide else None, dtype=dtype)
    return load_local_pipeline(load, model) if Path(model).is_dir() else load()


def run(args: argparse.Namespace) -> int:
    from uplift_diffusion.commands.loading import check_model_source
    from uplift_diffusion.utils.device import resolve_device_dtype
    from uplift_diffusion.utils.errors import InputError, OutputExistsError
    from uplift_diffusion.utils.images import IMAGE_SUFFIXES
    from uplift_diffusion.utils.io import ensure_writable_dir, save_image_atomic

    # Cheap checks first (arguments, paths, device), then the weights.
    out = Path(args.output)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"-o {args.output}: expected an image file name ending in one of {', '.join(IMAGE_SUFFIXES)}")
    targets = [out] + ([out.with_name(f"{out.stem}_lowres{out.suffix}")] if args.save_low_res else [])
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise OutputExistsError(f"output exists: {', '.join(existing)} (pass --overwrite to replace)")
    flux2 = args.family == "flux2"
    model = args.model or (DEFAULT_FLUX2_REPO if flux2 else DEFAULT_SD_REPO)
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    multiple = 16 if flux2 else 8  # FLUX.2 packs 2x2 latents: 16 pixels
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value < multiple or value % multiple):
            raise InputError(f"--{name} must be a positive multiple of {multiple} (the "
                             f"{'VAE factor x the 2x2 latent packing' if flux2 else 'VAE factor'}), got {value}")
    if flux2 and args.negative_prompt is not None:
        raise InputError("--negative-prompt is not supported by FLUX.2 pipelines (--family flux2)")
    checks.refine(args)
    if args.fast_guide and not flux2:
        raise InputError("--fast-guide needs --family flux2 (it decodes FLUX.2 latents with taef2)")
    check_model_source(model, "--model")
    if args.upsampler is not None:
        check_model_source(args.upsampler, "--upsampler")
    ensure_writable_dir(out.parent)
    device, dtype = resolve_device_dtype(args.device, args.dtype)

    import torch

    if flux2 and args.dtype is None and device.type == "cuda":
        dtype = torch.bfloat16  # FLUX.2 ships and runs in bfloat16; float16 overflows its activations (as FLUX.1's)
    generator = torch.Generator(device).manual_seed(args.seed)
    common = dict(height=args.height, width=args.width, upscale=args.upscale, generator=generator,
                  return_low_res=args.save_low_res, color_correction=color_correction_argument(args),
                  refine_strength=args.refine, refine_steps=args.refine_steps)
    if flux2:
        from uplift_diffusion.pipelines.flux2 import flux2_defaults

        pipe = load_flux2(model, args.upsampler, args.fast_guide, dtype).to(device)
        steps, guidance = flux2_defaults(pipe)
        steps = args.steps or steps
        guidance = args.guidance_scale if args.guidance_scale is not None else guidance
        result = pipe(prompt=args.prompt, num_inference_steps=steps, guidance_scale=guidance, **common)
    else:
        pipe = load_pipeline(model, args.upsampler, dtype).to(device)
        guidance = args.guidance_scale if args.guidance_scale is not None else SD15_GUIDANCE
        result = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps or SD15_STEPS,
                      guidance_scale=guidance, **common)
    save_image_atomic(result.images[0], out)
    message = f"saved {out} ({result.images[0].width}x{result.images[0].height})"
    if args.save_low_res:
        save_image_atomic(result.low_res_images[0], targets[1])
        message += f" and {targets[1]}"
    print(message)
    return 0
