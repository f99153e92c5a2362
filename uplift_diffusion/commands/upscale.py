"""``uplift-diffusion upscale IN [IN ...] -o OUT --scale 4``: latent super-resolution of image files with UPLiFT."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from uplift_diffusion.commands.loading import (
    DEFAULT_PRESET,
    DEFAULT_SD_REPO,
    DEFAULT_UPSAMPLER,
    PRESET_PAIRS,
    add_device_arguments,
)

HELP = "Upscale images through a VAE's latent space with UPLiFT (2x, 4x, 8x, ...)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders of images or glob patterns")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output folder (files are named <name>_x<scale>.png), or an image file for one input")
    parser.add_argument("--scale", type=int, default=4, help="upscaling factor, a power of two (default 4)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESET_PAIRS),
                        help=f"the VAE + upsampler pair (default {DEFAULT_PRESET}: the taef2 pair shipped inside the "
                             f"package, offline; sd15: the SD 1.5 VAE {DEFAULT_SD_REPO} + the published "
                             f"{DEFAULT_UPSAMPLER}, from the Hub); --vae / --upsampler replace either part")
    parser.add_argument("--vae", default=None,
                        help="Hub repo id or local folder of the VAE: a diffusers VAE folder, a pipeline folder with "
                             "vae/, or a folder with taef2.safetensors or taef2_encoder.pth / taef2_decoder.pth "
                             "(default: the preset's)")
    parser.add_argument("--upsampler", default=None,
                        help="UPLiFT weights: Hub repo id, .safetensors / .pth file, or folder (published checkpoint "
                             "or UPLiFTModel.save_pretrained); default: the preset's")
    parser.add_argument("--tile-size", type=int, default=None,
                        help="process the upsampler in tiles of this many input pixels (multiple of 8) to bound memory")
    parser.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in input pixels (default 1/4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the upsampler's noise channels (default 0)")
    parser.add_argument("--no-color-correction", action="store_true", help="skip the colour-mean correction")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the upsampler (UPLiFTModel.compile: every part); pays off on GPUs and "
                             "for many images, not on CPU (see the README's Speed section)")
    add_device_arguments(parser)


def plan_outputs(inputs: list[Path], output: str, scale: int) -> list[Path]:
    """Output path per input; a single input may go to an explicit image file."""
    from uplift_diffusion.utils.errors import InputError
    from uplift_diffusion.utils.images import IMAGE_SUFFIXES
    from uplift_diffusion.utils.io import ensure_writable_dir

    out = Path(output)
    if out.suffix.lower() in IMAGE_SUFFIXES:
        if len(inputs) != 1:
            raise InputError(f"-o {output} is a single file but {len(inputs)} images were given; pass a folder")
        ensure_writable_dir(out.parent)
        return [out]
    ensure_writable_dir(out)
    targets = [out / f"{path.stem}_x{scale}.png" for path in inputs]
    clashes = sorted({t.name for t in targets if targets.count(t) > 1})
    if clashes:
        raise InputError(f"several inputs would be written to the same output name(s): {', '.join(clashes)}")
    return targets


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from uplift_diffusion.commands.loading import load_pair
    from uplift_diffusion.model import UPLiFTModel
    from uplift_diffusion.utils.device import resolve_device_dtype
    from uplift_diffusion.utils.errors import ImageConversionWarning, InputError, OutputExistsError
    from uplift_diffusion.utils.images import expand_inputs, load_image
    from uplift_diffusion.utils.io import save_image_atomic

    # Cheap checks first: arguments, inputs, outputs; then the weights.
    UPLiFTModel.iterations_for_scale(args.scale)
    if args.tile_overlap is not None and args.tile_size is None:
        raise InputError("--tile-overlap needs --tile-size (without tiles there is nothing to overlap)")
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    inputs = expand_inputs(args.inputs)
    targets = plan_outputs(inputs, args.output, args.scale)
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise OutputExistsError(f"output exists: {', '.join(existing[:3])}{' ...' if len(existing) > 3 else ''} "
                                f"(pass --overwrite to replace)")
    for path in inputs:  # fail on an unreadable image before loading any weights (conversion notes shown here)
        load_image(path)

    from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline
    from uplift_diffusion.utils.allocator import retain_freed_memory

    retain_freed_memory()  # our own short-lived process: no page faults for maps freed and allocated again
    vae, upsampler = load_pair(args.preset, args.vae, args.upsampler, dtype)
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=upsampler)
    pipe.to(device)
    if args.compile:
        pipe.upsampler.compile()
    pipe.check_inputs(args.scale, args.tile_size, args.tile_overlap, "pil")
    pipe.set_progress_bar_config(leave=False)
    for path, target in tqdm(list(zip(inputs, targets, strict=True)), desc="images", disable=len(inputs) < 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageConversionWarning)  # already noted above
            image = load_image(path)
        generator = torch.Generator(device).manual_seed(args.seed)
        result = pipe(image, scale=args.scale, generator=generator, tile_size=args.tile_size,
                      tile_overlap=args.tile_overlap, color_correction=not args.no_color_correction).images[0]
        save_image_atomic(result, target)
        print(f"{path} ({image.width}x{image.height}) -> {target} ({result.width}x{result.height})")
    return 0
