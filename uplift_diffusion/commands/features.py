"""``uplift-diffusion features IMG --backbone dinov2-s14 --pca out.png``: pixel-dense DINO features of an image
with UPLiFT, as a joint-PCA strip and / or a safetensors file. Linear probes: ``uplift-diffusion
probe``."""

from __future__ import annotations

import argparse

from uplift_diffusion.commands.checks import int_in
from uplift_diffusion.commands.loading import add_feature_backbone_arguments
from uplift_diffusion.utils.device import add_device_arguments

HELP = "Pixel-dense DINOv2 / DINOv3 features with UPLiFT: PCA strip (--pca) and / or features (--save)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMG", help="input image file")
    add_feature_backbone_arguments(parser)
    parser.add_argument("--pca", default=None, metavar="OUT.png",
                        help="write the joint-PCA strip: image | backbone | step 1 | ... | step n")
    parser.add_argument("--save", default=None, metavar="OUT.safetensors",
                        help="write the pixel-dense features ([1, C, H, W], key 'features') and the backbone "
                             "features (key 'backbone')")
    parser.add_argument("--iterations", type=int_in(None, 8), default=4, help="UPLiFT 2x steps (default 4)")
    parser.add_argument("--size", type=int_in(None, 16384), default=None,
                        help="resize the image so that its longer side is SIZE pixels first (default: as is)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_device_arguments(parser, dtype=False)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from PIL import Image

    from uplift_diffusion.commands import checks
    from uplift_diffusion.commands.loading import check_model_source
    from uplift_diffusion.utils.device import resolve_device_dtype
    from uplift_diffusion.utils.errors import InputError, OutputExistsError
    from uplift_diffusion.utils.images import load_image
    from uplift_diffusion.utils.io import refuse_outputs_onto_inputs, require_path

    if not args.pca and not args.save:
        raise InputError("nothing to do: pass --pca OUT.png and / or --save OUT.safetensors")
    if args.size is not None and args.size < 1:
        raise InputError(f"--size must be >= 1 pixel, got {args.size}")
    if args.iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {args.iterations}")
    if args.save and not args.save.endswith(".safetensors"):
        raise InputError(f"--save must end with .safetensors, got {args.save}")
    for flag, out in (("--pca", args.pca), ("--save", args.save)):
        refuse_outputs_onto_inputs([out] if out else [], [args.image], flag)
    for out in (args.pca, args.save):
        if out and Path(out).exists() and not args.overwrite:
            raise OutputExistsError(f"output exists: {out} (pass --overwrite to replace)")
    require_path(args.image, "file", "image", f"image not found: {args.image}")  # the inputs too, before torch
    checks.feature_backbone("--backbone", args.backbone, "--backbone-weights", args.backbone_weights)
    if args.upsampler:
        check_model_source(args.upsampler, "--upsampler")
    device, _ = resolve_device_dtype(args.device)
    image = load_image(args.image)
    if args.size:
        scale = args.size / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BICUBIC)

    from uplift_diffusion.commands.loading import load_feature_extractor
    from uplift_diffusion.features import pca_strip
    from uplift_diffusion.utils.allocator import retain_freed_memory
    from uplift_diffusion.utils.io import atomic_write

    retain_freed_memory()  # our own short-lived process: no page faults for maps freed and allocated again

    extractor = load_feature_extractor(args, device)
    steps, backbone = extractor(image, iterations=args.iterations, output_size=None, return_all_steps=True,
                                return_backbone=True)
    if args.pca:
        strip = pca_strip(image, backbone, steps)
        atomic_write(args.pca, strip.save)
        print(f"wrote {args.pca} ({strip.width}x{strip.height}: image | backbone | {len(steps)} steps)")
    if args.save:
        from safetensors.torch import save_file

        from uplift_diffusion.utils.image_ops import bilinear_resize

        dense = bilinear_resize(steps[-1], (image.height, image.width))  # pixel-dense: one vector per pixel
        tensors = {"features": dense.float().cpu().contiguous(), "backbone": backbone.float().cpu().contiguous()}
        atomic_write(args.save, lambda tmp: save_file(tensors, tmp, metadata={"backbone": args.backbone}))
        print(f"wrote {args.save} (features {tuple(dense.shape)}, backbone {tuple(backbone.shape)})")
    return 0
