"""``uplift-diffusion generate "prompt" --upscale 2 -o out.png``: Stable Diffusion 1.5 + UPLiFT text-to-image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from uplift_diffusion.commands.loading import DEFAULT_SD_REPO, DEFAULT_UPSAMPLER, add_device_arguments

HELP = "Generate an image with Stable Diffusion 1.5 and upscale it in latent space with UPLiFT."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="text prompt")
    parser.add_argument("-o", "--output", required=True, help="output image file (.png, .jpg, ...)")
    parser.add_argument("--upscale", type=int, default=2, choices=(1, 2, 4, 8), help="UPLiFT upscaling (default 2)")
    parser.add_argument("--model", default=DEFAULT_SD_REPO,
                        help=f"Stable Diffusion 1.5 pipeline: Hub repo id or local folder (default {DEFAULT_SD_REPO})")
    parser.add_argument("--upsampler", default=None,
                        help="UPLiFT weights (repo id, file or folder); default: the model folder's own upsampler if "
                             f"it has one, else {DEFAULT_UPSAMPLER}")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance (default 7.5)")
    parser.add_argument("--height", type=int, default=None, help="low-resolution height (default: the model's, 512)")
    parser.add_argument("--width", type=int, default=None, help="low-resolution width (default: the model's, 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--save-low-res", action="store_true", help="also save <output>_lowres.<ext>")
    parser.add_argument("--no-color-correction", action="store_true", help="skip the colour-mean correction")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device_arguments(parser)


def _has_upsampler(model: str) -> bool:
    index = Path(model) / "model_index.json"
    return index.is_file() and "upsampler" in json.loads(index.read_text())


def load_pipeline(model: str, upsampler: str | None, dtype):
    from uplift_diffusion.commands.loading import check_model_source, load_upsampler
    from uplift_diffusion.pipelines import UPLiFTPipeline
    from uplift_diffusion.utils.errors import UnavailableError
    from uplift_diffusion.utils.hub import ensure_hub_reachable

    check_model_source(model, "--model")  # before the upsampler's weights load
    kwargs = {}
    if upsampler is not None or not _has_upsampler(model):
        kwargs["upsampler"] = load_upsampler(upsampler or DEFAULT_UPSAMPLER, dtype)
    if Path(model).is_dir():
        return UPLiFTPipeline.from_pretrained(model, dtype=dtype, **kwargs)
    ensure_hub_reachable()
    try:
        return UPLiFTPipeline.from_pretrained(model, dtype=dtype, **kwargs)
    except OSError as err:  # the Hub's errors (no network, missing repo / file) are OSErrors
        raise UnavailableError(f"could not load the Stable Diffusion pipeline {model!r} from the Hugging Face Hub "
                               f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); if "
                               f"this machine is offline, download it elsewhere (`hf download {model}`) and pass the "
                               f"local folder with --model DIR") from None


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
    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value < 8 or value % 8):
            raise InputError(f"--{name} must be a positive multiple of 8 (the VAE's factor), got {value}")
    check_model_source(args.model, "--model")
    if args.upsampler is not None:
        check_model_source(args.upsampler, "--upsampler")
    ensure_writable_dir(out.parent)
    device, dtype = resolve_device_dtype(args.device, args.dtype)

    import torch

    pipe = load_pipeline(args.model, args.upsampler, dtype).to(device)
    generator = torch.Generator(device).manual_seed(args.seed)
    result = pipe(args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                  num_inference_steps=args.steps, guidance_scale=args.guidance_scale, upscale=args.upscale,
                  generator=generator, return_low_res=args.save_low_res,
                  color_correction=not args.no_color_correction)
    save_image_atomic(result.images[0], out)
    message = f"saved {out} ({result.images[0].width}x{result.images[0].height})"
    if args.save_low_res:
        save_image_atomic(result.low_res_images[0], targets[1])
        message += f" and {targets[1]}"
    print(message)
    return 0
