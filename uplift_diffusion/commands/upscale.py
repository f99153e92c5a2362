"""``uplift-diffusion upscale IN [IN ...] -o OUT --scale 4``: latent super-resolution of image files with UPLiFT."""

from __future__ import annotations

import argparse
from pathlib import Path

from uplift_diffusion.commands.checks import SEED_RANGE, float_in, int_in, output_size_arg
from uplift_diffusion.commands.loading import (
    add_color_correction_arguments,
    add_device_arguments,
    add_pair_arguments,
    color_correction_argument,
)

HELP = "Upscale images through a VAE's latent space with UPLiFT (any factor >= 1, or an exact size)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders of images or glob patterns")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output folder (files are named <name>_x<scale>.png, or <name>_<W>x<H>.png with "
                             "--size), or an image file for one input")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float_in(1, 64), default=None,
                      help="upscaling factor, any number >= 1 (default 4): powers of two are UPLiFT steps alone; "
                           "other factors run UPLiFT to the next power of two, then resize (see --resample); each "
                           "side is rounded half up")
    size.add_argument("--size", type=output_size_arg, default=None, metavar="WxH",
                      help="exact output size in pixels, WIDTHxHEIGHT (e.g. 1920x1080), for every input; each side "
                           "at least the input's (the aspect ratio may change)")
    parser.add_argument("--resample", default="pixel", choices=("pixel", "latent"),
                        help="how a factor that is not a power of two reaches its size: resize the decoded image "
                             "(pixel, default: better on photos, docs/pipelines.md) or the upscaled latents (latent)")
    add_pair_arguments(parser)
    parser.add_argument("--tile-size", type=int_in(None, 65536), default=None,
                        help="process the upsampler in tiles of this many input pixels (multiple of 8) to bound memory")
    parser.add_argument("--tile-overlap", type=int_in(None, 65536), default=None,
                        help="tile overlap in input pixels (default 1/4)")
    parser.add_argument("--seed", type=int_in(*SEED_RANGE), default=0,
                        help="seed of the upsampler's noise channels (default 0)")
    add_color_correction_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--skip-existing", action="store_true",
                        help="leave existing output files as they are and upscale only the missing ones (continue an "
                             "interrupted run: outputs are written atomically, so a present file is complete)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the upsampler (UPLiFTModel.compile: every part); pays off on GPUs and "
                             "for many images, not on CPU (see docs/speed.md)")
    add_device_arguments(parser)


# What --output may name as a single file: the formats Pillow writes losslessly or as the user asked.
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def check_arguments(args: argparse.Namespace) -> None:
    """The checks that need no model and no torch: a wrong flag is reported at once, before the heavy imports."""
    from uplift_diffusion.utils.errors import InputError

    if args.tile_overlap is not None and args.tile_size is None:
        raise InputError("--tile-overlap needs --tile-size (without tiles there is nothing to overlap)")
    if args.tile_size is not None and (args.tile_size < 32 or args.tile_size % 8):
        raise InputError(f"--tile-size must be a multiple of 8 and >= 32 pixels, got {args.tile_size}")
    if args.tile_overlap is not None and (args.tile_overlap < 0 or args.tile_overlap % 8
                                          or args.tile_overlap >= args.tile_size):
        raise InputError(f"--tile-overlap must be a multiple of 8 in [0, --tile-size), got {args.tile_overlap}")
    if args.overwrite and args.skip_existing:
        raise InputError("--overwrite and --skip-existing contradict each other: pick one")
    suffix = Path(args.output).suffix.lower()
    if suffix and suffix not in OUTPUT_SUFFIXES and not Path(args.output).is_dir():
        raise InputError(f"-o {args.output}: cannot write {suffix} images; name a {', '.join(OUTPUT_SUFFIXES)} file "
                         f"or a folder")


def output_suffix(scale: float | None, size: tuple[int, int] | None) -> str:
    """What the output file name says was done: ``_x4``, ``_x1.5`` or ``_1920x1080`` (``size`` is (width, height))."""
    return f"_{size[0]}x{size[1]}" if size is not None else f"_x{scale:g}"


def plan_outputs(inputs: list[Path], output: str, suffix: str, create: bool = True) -> list[Path]:
    """Output path per input (``<stem><suffix>.png`` in a folder); a single input may go to an explicit image file
    (``create``: make the folder)."""
    from uplift_diffusion.utils.errors import InputError
    from uplift_diffusion.utils.io import ensure_writable_dir

    out = Path(output)
    if out.suffix.lower() in OUTPUT_SUFFIXES and not out.is_dir():
        if len(inputs) != 1:
            raise InputError(f"-o {output} is a single file but {len(inputs)} images were given; pass a folder")
        if create:
            ensure_writable_dir(out.parent)
        return [out]
    if create:
        ensure_writable_dir(out)
    targets = [out / f"{path.stem}{suffix}.png" for path in inputs]
    clashes = sorted({t.name for t in targets if targets.count(t) > 1})
    if clashes:
        raise InputError(f"several inputs would be written to the same output name(s): {', '.join(clashes)}")
    return targets


def readable_inputs(inputs: list[Path], size: tuple[int, int] | None = None) -> tuple[list[Path], list[str]]:
    """The inputs that open as images (conversion notes shown once, here) and one line per unreadable one. With an
    exact output ``size`` (width, height), an input larger than it on either side is an InputError, before any work."""
    from uplift_diffusion.utils.errors import InputError
    from uplift_diffusion.utils.images import load_image

    good, bad = [], []
    for path in inputs:
        try:
            image = load_image(path)
            good.append(path)
        except InputError as err:
            bad.append(str(err))
            continue
        if size is not None and (image.width > size[0] or image.height > size[1]):
            raise InputError(f"--size {size[0]}x{size[1]} is smaller than {path} ({image.width}x{image.height}): "
                             f"an upscaler only enlarges; pick a size at least the input's on both sides")
    return good, bad


def run(args: argparse.Namespace) -> int:
    import sys
    import warnings

    from uplift_diffusion.utils.errors import InputError, OutputExistsError
    from uplift_diffusion.utils.images import expand_inputs, image_decodes, input_folders
    from uplift_diffusion.utils.io import refuse_output_folder_in_inputs, refuse_outputs_onto_inputs

    # Cheap checks first (no torch yet): arguments, inputs, outputs; then the weights.
    check_arguments(args)
    refuse_output_folder_in_inputs(args.output, input_folders(args.inputs), recursive=False)
    inputs = expand_inputs(args.inputs)
    scale = args.scale if args.scale is not None or args.size is not None else 4
    suffix = output_suffix(scale, args.size)
    refuse_outputs_onto_inputs(plan_outputs(inputs, args.output, suffix, create=False), inputs)
    inputs, unreadable = readable_inputs(inputs, args.size)
    if not inputs:
        raise InputError(f"no readable image among the inputs: {'; '.join(unreadable[:3])}"
                         f"{' ...' if len(unreadable) > 3 else ''}")
    targets = plan_outputs(inputs, args.output, suffix)
    existing = [t for t in targets if t.exists()]
    if existing and not (args.overwrite or args.skip_existing):
        names = ", ".join(str(t) for t in existing[:3])
        raise OutputExistsError(f"output exists: {names}{' ...' if len(existing) > 3 else ''} (pass --overwrite to "
                                f"replace, or --skip-existing to upscale only the missing ones)")
    done = set()
    if args.skip_existing and existing:  # an output counts as done only when it reads as an image
        done = {t for t in existing if image_decodes(t)}
        damaged = [t.name for t in existing if t not in done]
        if damaged:
            warnings.warn(f"redoing {len(damaged)} unreadable output(s) (empty or truncated: "
                          f"{', '.join(damaged[:3])}{' ...' if len(damaged) > 3 else ''}) despite --skip-existing",
                          stacklevel=1)
        if done:
            print(f"skipping {len(done)} image(s) whose output exists (--skip-existing)")
    jobs = [(p, t) for p, t in zip(inputs, targets, strict=True) if t not in done]

    import torch
    from tqdm.auto import tqdm

    from uplift_diffusion.commands.loading import load_pair
    from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline
    from uplift_diffusion.utils.allocator import retain_freed_memory
    from uplift_diffusion.utils.device import resolve_device_dtype
    from uplift_diffusion.utils.errors import ImageConversionWarning
    from uplift_diffusion.utils.images import load_image
    from uplift_diffusion.utils.io import save_image_atomic

    device, dtype = resolve_device_dtype(args.device, args.dtype)
    retain_freed_memory()  # our own short-lived process: no page faults for maps freed and allocated again
    vae, upsampler = load_pair(args.pair, args.vae, args.upsampler, dtype)
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=upsampler)  # the upsampler's own colour correction
    pipe.to(device)
    if args.compile:
        pipe.upsampler.compile()
    size = (args.size[1], args.size[0]) if args.size is not None else None  # the pipeline's (height, width)
    pipe.check_inputs(scale, args.tile_size, args.tile_overlap, "pil", size=size, resample=args.resample)
    pipe.set_progress_bar_config(leave=False)
    for path, target in tqdm(jobs, desc="images", disable=len(jobs) < 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageConversionWarning)  # already noted above
            image = load_image(path)
        generator = torch.Generator(device).manual_seed(args.seed)
        result = pipe(image, scale=scale, size=size, resample=args.resample, generator=generator,
                      tile_size=args.tile_size, tile_overlap=args.tile_overlap,
                      color_correction=color_correction_argument(args)).images[0]
        save_image_atomic(result, target)
        print(f"{path} ({image.width}x{image.height}) -> {target} ({result.width}x{result.height})")
    if unreadable:
        print(f"uplift-diffusion upscale: error: {len(unreadable)} input(s) could not be read and were skipped "
              f"({len(jobs)} upscaled):", file=sys.stderr)
        for line in unreadable:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
