"""Super-resolution benchmark (paper Table 4, FacesHQ / LHQ protocol of appendix B.2) on any folder of images.

Per image: ``size``² centre crop (1024), downscaled by ``scale`` (``downsample="bilinear-aliased"``: the paper's
protocol, ``F.interpolate`` bilinear, ``antialias=False``, ``align_corners=False``, on [-1, 1] tensors;
``"bicubic"``: the standard super-resolution protocol, PIL's antialiased ``BICUBIC``) and stored as 8 bits, as a
user's low-res file would be. Every latent method then runs through
:class:`~uplift_diffusion.UPLiFTSuperResolutionPipeline`, the path users run (``upscale``, the web page): UPLiFT with
the upsampler's own colour correction, and the latent baselines (the same latents interpolated bilinearly / nearest,
then decoded, not corrected). Pixel bicubic (PIL) is the baseline a user would pick. Metrics against the high-res
crop: SSIM, PSNR (per image, then the mean), the output's saturation and contrast relative to the original's, FID
and patch-FID.

Run it with ``uplift-diffusion eval sr --images DIR --pair taef2 --output OUT`` or
``python -m uplift_diffusion eval sr ...`` (same arguments).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from PIL import Image
from uplift_diffusion.eval.common import (
    ResultsFolder,
    Timings,
    apply_limit,
    chunks,
    generators,
    markdown_table,
    on_main_process,
    process_share,
    sample,
    save_grid,
    seed_everything,
)
from uplift_diffusion.eval.latency import measure_latency
from uplift_diffusion.eval.metrics import FID, PairedMetrics, PatchFID
from uplift_diffusion.pipelines.common import check_scale_or_size, color_correction_for, power_of_two_for

from uplift_diffusion.model import UPLiFTModel
from uplift_diffusion.utils.deprecation import warn_renamed
from uplift_diffusion.utils.errors import InputError, StaleResultsError
from uplift_diffusion.utils.fingerprint import file_digest, module_identity
from uplift_diffusion.utils.image_ops import float_to_uint8, to_tensor_uint8
from uplift_diffusion.utils.images import expand_inputs, image_size, load_image

METHODS = ("uplift", "latent-bilinear", "latent-nearest", "pixel-bicubic")
METHOD_LABELS = {"uplift": "UPLiFT", "latent-bilinear": "Bilinear", "latent-nearest": "Nearest",
                 "pixel-bicubic": "Bicubic (pixels)"}
DOWNSAMPLES = {
    "bilinear-aliased": "F.interpolate bilinear, antialias=False, align_corners=False, on [-1, 1] (paper B.2); uint8",
    "bicubic": "PIL Image.resize BICUBIC, antialiased (standard SR protocol); uint8",
}
# Old names of a protocol, accepted with a deprecation warning: "bilinear" is antialiased everywhere else
# (training's ``data.downscale``, ``utils.image_ops.bilinear_resize``); the paper's B.2 protocol is not.
RENAMED_DOWNSAMPLES = {"bilinear": "bilinear-aliased"}


def downsample_protocol(name: str) -> str:
    """A low-res protocol's name (an old name resolved with a deprecation warning); InputError if unknown."""
    if name in RENAMED_DOWNSAMPLES:
        warn_renamed(f"the downsample protocol {name!r}", repr(RENAMED_DOWNSAMPLES[name]))
        name = RENAMED_DOWNSAMPLES[name]
    if name not in DOWNSAMPLES:
        raise InputError(f"unknown downsample protocol {name!r}; choose from {tuple(DOWNSAMPLES)}")
    return name
TABLE_HEADERS = ("Method", "Iters", "Params (M)", "SSIM ↑", "PSNR ↑", "Sat. ratio", "Contrast ratio", "Grid ratio",
                 "FID ↓", "p-FID ↓")


def select_images(folder: str | os.PathLike, size: int, num_samples: int | None, seed: int,
                  limit: int | None) -> tuple[list[Path], list[str]]:
    """Image files of ``folder`` whose sides are both >= ``size`` (a seeded random ``num_samples`` of them, then the
    first ``limit``), and the names of the files that were too small."""
    files = expand_inputs([str(folder)])
    keep, small = [], []
    for path in files:
        w, h = image_size(path)
        (keep if min(w, h) >= size else small).append(path)
    if not keep:
        raise InputError(f"no image in {folder} has both sides >= {size} pixels (the protocol's centre crop); "
                         f"use a smaller --size")
    return apply_limit(sample(keep, num_samples, seed), limit), [p.name for p in small]


def low_res_side(side: int, scale: float) -> int:
    """The low-res side of a ``side``-pixel high-res image at ``scale``: ``side / scale`` rounded half up (exact for a
    power of two dividing ``side``); the upscalers then enlarge it back to exactly ``side``."""
    return max(1, math.floor(side / scale + 0.5))


def downscale_uint8(hr: torch.Tensor, scale: float, downsample: str = "bilinear-aliased") -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, H/scale, W/scale] (:func:`low_res_side`) by the ``downsample`` protocol (see
    :data:`DOWNSAMPLES`)."""
    h, w = low_res_side(hr.shape[-2], scale), low_res_side(hr.shape[-1], scale)
    downsample = downsample_protocol(downsample)
    if downsample == "bilinear-aliased":
        lr = F.interpolate(hr[None].float() / 127.5 - 1, size=(h, w), mode="bilinear", align_corners=False,
                           antialias=False)  # [-1, 1]
        return torch.from_numpy(float_to_uint8((lr + 1) / 2)[0]).permute(2, 0, 1).contiguous()
    image = Image.fromarray(hr.permute(1, 2, 0).numpy()).resize((w, h), Image.BICUBIC)
    return to_tensor_uint8(image)


def load_pair(path: Path, size: int, scale: float,
              downsample: str = "bilinear-aliased") -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 [3, size, size] centre crop and its uint8 [3, size/scale, size/scale] low-res version."""
    image = load_image(path)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    hr = to_tensor_uint8(image.crop((left, top, left + size, top + size)))
    return hr, downscale_uint8(hr, scale, downsample)


def pixel_bicubic(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [B, 3, h, w] -> uint8 [B, 3, *size] with PIL's bicubic resize (the user's baseline)."""
    return torch.stack([to_tensor_uint8(Image.fromarray(x.permute(1, 2, 0).numpy()).resize((size[1], size[0]),
                                                                                            Image.BICUBIC))
                        for x in low_res])


@torch.no_grad()
def super_resolve(method: str, low_res: torch.Tensor, pipeline, size: tuple[int, int],
                  generator: list[torch.Generator] | None = None, color_correction: bool = True) -> torch.Tensor:
    """uint8 [B, 3, h, w] -> uint8 [B, 3, *size] (the high-res images' (height, width)), the images a user of the
    pipeline gets (a power-of-two factor runs UPLiFT alone; any other the pipeline's default resampling after it).

    ``"uplift"``: :class:`~uplift_diffusion.UPLiFTSuperResolutionPipeline` as ``upscale`` runs it (the upsampler's
    own colour correction unless ``color_correction`` is False); ``"latent-bilinear"`` / ``"latent-nearest"``: the
    same pipeline interpolating the latents (no colour correction); ``"pixel-bicubic"``: PIL bicubic.
    """
    if method == "pixel-bicubic":
        return pixel_bicubic(low_res, size)
    if method not in METHODS:
        raise InputError(f"unknown super-resolution method {method!r}; choose from {METHODS}")
    baseline = method != "uplift"
    out = pipeline(low_res, size=size, generator=None if baseline else generator, output_type="pil",
                   color_correction=color_correction and not baseline, upsampling=method)
    return torch.stack([to_tensor_uint8(image) for image in out.images])


INPUTS_FILE = "inputs.json"  # saved image name -> sha256 of the input file it was made from


def check_inputs_unchanged(folder: ResultsFolder, inputs: dict[str, str], methods: Sequence[str],
                           overwrite: bool) -> None:
    """Saved images whose input file changed since they were made (same name, other content) are refused (with
    ``overwrite``: deleted, so they are made again); then the inputs' digests are recorded. Per image, so that a run
    with a larger ``--limit`` still resumes the images already made."""
    saved = folder.read_json(INPUTS_FILE) or {}
    changed = sorted(name for name, digest in inputs.items() if saved.get(name, digest) != digest)
    made = [name for name in changed if any(folder.image_path(m, name).is_file() for m in methods)]
    if made and not overwrite:
        raise StaleResultsError(f"{folder.root}: {len(made)} input image(s) changed since their results were made "
                                f"({', '.join(made[:4])}{' ...' if len(made) > 4 else ''}); pass --overwrite to "
                                f"make them again, or use a new --output folder")
    for name in made:
        for method in methods:
            folder.image_path(method, name).unlink(missing_ok=True)
    folder.write_json(INPUTS_FILE, {**saved, **inputs})


def sr_fingerprint(method: str, size: int, scale: int, seed: int, batch_size: int, color_correction: str | bool,
                   vae_identity: dict, upsampler_identity: dict | None, device_type: str,
                   downsample: str = "bilinear-aliased") -> dict:
    """Everything that determines the saved images of one method (the inputs' contents are checked per image, see
    :func:`check_inputs_unchanged`): the protocol, the VAE; the UPLiFT path adds the upsampler, the seed of its
    noise and the colour correction; the baselines are deterministic."""
    fingerprint = dict(benchmark="sr", method=method, size=size, scale=scale, downsample=DOWNSAMPLES[downsample])
    if method != "pixel-bicubic":
        fingerprint.update(batch_size=batch_size, vae=vae_identity, device=device_type)
    if method == "uplift":
        fingerprint.update(upsampler=upsampler_identity, seed=seed, color_correction=color_correction)
    return fingerprint


def run_sr_benchmark(
    images: str | os.PathLike,
    vae,
    output_dir: str | os.PathLike,
    upsampler: UPLiFTModel | None = None,
    methods: Sequence[str] = METHODS,
    size: int = 1024,
    scale: float = 4,
    num_samples: int | None = 5000,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 1,
    color_correction: bool = True,
    fid_factory: Callable[[], FID] | None = None,
    patch_size: int = 512,
    num_crops: int = 4,
    reference_stats: str | os.PathLike | None = None,
    latency: bool = False,
    latency_warmup: int = 3,
    latency_iterations: int = 10,
    dataset_name: str | None = None,
    extra_config: dict | None = None,
    overwrite: bool = False,
    downsample: str = "bilinear-aliased",
) -> dict | None:
    """Run the super-resolution benchmark; returns the ``results.json`` content (``None`` on the processes other
    than the main one when launched with ``accelerate launch``: each generates and scores its share of the images,
    the scores are gathered, the main process alone times the model and writes the results).

    Args:
        images: folder of high-resolution images (FacesHQ, LHQ, CelebA-HQ, ...).
        vae: the autoencoder (AutoencoderKL, AutoencoderTiny or TAEF2) the upsampler works with, or a ready
            [`UPLiFTSuperResolutionPipeline`] (then ``upsampler`` must be ``None``: the pipeline's is used).
        output_dir: results folder (``images/<method>/``, ``results.json``, ``table.md``, ``samples.png``).
        upsampler: UPLiFT model (``in_channels`` = the VAE's latent channels); required for ``"uplift"``.
        methods: any of ``"uplift"``, ``"latent-bilinear"``, ``"latent-nearest"``.
        size: side of the high-res centre crop (1024); images with a smaller side are skipped (listed in the config).
        scale: upscaling factor, any number >= 1 (4: 256 -> 1024, two UPLiFT steps; 1.5: 683 -> 1024, UPLiFT to 2x
            then the pipeline's resampling); the low-res side is ``size / scale`` rounded half up.
        num_samples: seeded random subset of the folder (5000 in the paper); ``None`` for all.
        limit: only the first ``limit`` selected images (quick runs).
        seed: selects the images, the patch-FID crops and (with the image index) the upsampler's noise.
        batch_size: images per forward pass.
        color_correction: colour-correct UPLiFT outputs against the low-res input with the upsampler's own
            correction (its config's ``color_correction``: the paper's mean for published checkpoints).
        fid_factory: makes a fresh [`FID`] accumulator (one for full images, one for crops); ``None`` skips FID.
        patch_size / num_crops: patch-FID crops (512², 4 per image pair).
        reference_stats: folder for the real set's FID statistics (``.npz``, reused by later runs on the same images);
            defaults to ``output_dir``.
        latency: also time the ``"uplift"`` path end to end at batch 1 (appendix B.2 protocol).
        dataset_name: recorded name of the image set (default: the folder's name).
        extra_config: more entries for ``results.json``'s config (e.g. the model paths).
        overwrite: regenerate a method's saved images when they were made with other settings (see
            :func:`sr_fingerprint`); without it such a folder is refused.
        downsample: how the low-res inputs are made: ``"bilinear-aliased"`` (paper B.2; ``"bilinear"`` is
            its deprecated name) or ``"bicubic"`` (PIL, antialiased:
            the standard super-resolution protocol).
    """
    from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline

    if isinstance(vae, UPLiFTSuperResolutionPipeline):
        pipeline = vae
        if upsampler is not None:
            raise InputError("pass either a pipeline or (vae, upsampler), not both")
        vae, upsampler = pipeline.vae, pipeline.upsampler
    else:
        pipeline = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=upsampler)
    pipeline.set_progress_bar_config(disable=True)
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in METHODS:
            raise InputError(f"unknown method {m!r}; choose from {METHODS}")
    if "uplift" in methods and upsampler is None:
        raise InputError("method 'uplift' needs an upsampler (or leave it out of methods)")
    check_scale_or_size(scale, None)
    downsample = downsample_protocol(downsample)
    power = float(scale).is_integer() and int(scale) >= 2 and not int(scale) & (int(scale) - 1)
    if power and size % (int(scale) * 8):
        raise InputError(f"size must be a multiple of {int(scale) * 8} (scale x the VAE's 8x factor), got {size}")
    low_side = low_res_side(size, scale)
    iterations = int(math.log2(power_of_two_for(low_side, low_side, (size, size))))
    seed_everything(seed)
    folder = ResultsFolder(output_dir)
    files, skipped = select_images(images, size, num_samples, seed, limit)
    names = [f"{i:05d}_{p.stem}" for i, p in enumerate(files)]
    dataset_name = dataset_name or Path(images).name
    timings = Timings()
    params = {"uplift": upsampler.num_parameters() / 1e6 if upsampler is not None else None}

    # 1. Generate every missing image (fixed chunks: reruns form the same batches); saved images are reused only
    #    when they were made with the same settings
    #    Under `accelerate launch` every process generates its share of the batches (what exists is skipped, whoever
    #    made it); the main process alone records the fingerprints first and scores the images afterwards.
    inputs = {name: file_digest(path) for name, path in zip(names, files, strict=True)}
    vae_identity = module_identity(vae)
    upsampler_identity = module_identity(upsampler) if "uplift" in methods else None
    correction = (color_correction_for(upsampler, True, pipeline.config.color_correction_mode).mode
                  if color_correction and upsampler is not None else False)

    def claim():
        for method in methods:
            folder.claim(method, sr_fingerprint(method, size, scale, seed, batch_size, correction, vae_identity,
                                                upsampler_identity, next(vae.parameters()).device.type, downsample),
                         overwrite)
        check_inputs_unchanged(folder, inputs, methods, overwrite)

    on_main_process(claim)
    state = PartialState()

    def low_res_batch(idx):
        return torch.stack([load_pair(files[i], size, scale, downsample)[1] for i in idx])

    for method in methods:
        def make(idx, method=method):
            return super_resolve(method, low_res_batch(idx), pipeline, (size, size), generators(seed, idx),
                                 color_correction)

        folder.generate_missing(method, names, batch_size, make, timings, desc=f"sr {method}")
    state.wait_for_everyone()

    # 2. Metrics from the saved images (a rerun scores exactly the same files). Under `accelerate launch` each process
    #    scores its share of the batches; the per-image scores and the FID sums are gathered onto every process
    metrics: dict[str, dict] = {}
    batches = list(chunks(range(len(files)), batch_size))
    full_fid = fid_factory() if fid_factory is not None else None
    patch_fid = PatchFID(fid_factory(), patch_size, num_crops, seed) if fid_factory is not None else None
    stats_dir = Path(reference_stats) if reference_stats is not None else folder.root
    key = f"sr:{dataset_name}:{size}:n={len(files)}:seed={seed}:" + ",".join(f"{n}={d}" for n, d in inputs.items())
    if full_fid is not None:
        have_real = (full_fid.load_reference(stats_dir / f"fid_real_{full_fid.name}.npz", key)
                     and patch_fid.fid.load_reference(stats_dir / f"pfid_real_{full_fid.name}.npz",
                                                      f"{key}:{patch_size}x{num_crops}"))
        if not have_real:
            full_fid, patch_fid = fid_factory(), PatchFID(fid_factory(), patch_size, num_crops, seed)
            with timings("metrics/real"):
                for idx in process_share(batches, "sr real stats"):
                    hr = torch.stack([load_pair(files[i], size, scale, downsample)[0] for i in idx])
                    full_fid.update(hr, real=True)
                    patch_fid.update(hr, idx, real=True)
                full_fid.gather(real=True), patch_fid.fid.gather(real=True)
            if state.is_main_process:
                full_fid.save_reference(stats_dir / f"fid_real_{full_fid.name}.npz", key)
                patch_fid.fid.save_reference(stats_dir / f"pfid_real_{full_fid.name}.npz",
                                             f"{key}:{patch_size}x{num_crops}")
    for method in methods:
        paired = PairedMetrics()
        if full_fid is not None:
            full_fid.reset_fake(), patch_fid.fid.reset_fake()
        with timings(f"metrics/{method}"):
            for idx in process_share(batches, f"sr metrics {method}"):
                hr = torch.stack([load_pair(files[i], size, scale, downsample)[0] for i in idx])
                sr = torch.stack([folder.load(method, names[i]) for i in idx])
                paired.update(sr, hr)
                if full_fid is not None:
                    full_fid.update(sr, real=False)
                    patch_fid.update(sr, idx, real=False)
            paired.gather()
            if full_fid is not None:
                full_fid.gather(real=False), patch_fid.fid.gather(real=False)
        metrics[method] = dict(paired.compute(), iterations=iterations if method == "uplift" else 1,
                               params_m=params.get(method), num_images=len(files))
        if full_fid is not None:
            metrics[method].update(fid=full_fid.compute(), patch_fid=patch_fid.compute())
    timings.gather()
    if not state.is_main_process:
        return None

    # 3. Latency of the UPLiFT path (batch 1, appendix B.2 protocol)
    if latency and "uplift" in methods:
        low_res = low_res_batch([0])
        param = next(upsampler.parameters())
        metrics["uplift"]["latency"] = measure_latency(
            lambda: super_resolve("uplift", low_res, pipeline, (size, size), generators(seed, [0]), color_correction),
            device=param.device, dtype=param.dtype, batch_size=1, warmup=latency_warmup,
            iterations=latency_iterations)

    # 4. Table, grid, results.json
    rows = [(METHOD_LABELS[m], metrics[m]["iterations"], metrics[m]["params_m"], metrics[m]["ssim"],
             metrics[m]["psnr"], metrics[m]["saturation_ratio"], metrics[m]["contrast_ratio"], metrics[m]["grid_ratio"],
             metrics[m].get("fid"), metrics[m].get("patch_fid")) for m in methods]
    table = (f"Super-resolution {low_side}->{size} on {len(files)} images of {dataset_name}\n\n"
             + markdown_table(TABLE_HEADERS, rows))
    grid = []
    for i in range(min(4, len(files))):
        hr, lr = load_pair(files[i], size, scale, downsample)
        lr_up = F.interpolate(lr[None], size=(size, size), mode="nearest")[0]
        grid.append([lr_up, hr] + [folder.load(m, names[i]) for m in methods])
    save_grid(grid, folder.root / "samples.png")
    config = dict(
        images=str(images), dataset=dataset_name, num_images=len(files), num_samples=num_samples, limit=limit,
        size=size, scale=scale, low_res=low_side, methods=methods, seed=seed, batch_size=batch_size,
        color_correction=correction, patch_size=patch_size, num_crops=num_crops,
        fid=full_fid.name if full_fid is not None else None, skipped_too_small=skipped,
        downsample=DOWNSAMPLES[downsample], pipeline="UPLiFTSuperResolutionPipeline (as `upscale` runs it)",
        colour="saturation_ratio / contrast_ratio: the output's mean HSV saturation / std of luma over the "
               "original's, per image then mean (1 = faithful)",
        grid_ratio="how much the luma spectrum peaks on the harmonics of the 8-pixel latent grid, over the original's, "
                   "per image then mean (1 = no more mesh than the photo; > 1.3 visible)",
        ssim="gaussian 11/1.5, 5-px border of the SSIM map cropped, per image then mean",
        psnr="per image on [0, 1], then mean", grid_columns=["low-res (nearest)", "high-res"] + methods,
        vae=type(vae).__name__, upsampler_config=dict(upsampler.config) if upsampler is not None else None,
        num_processes=state.num_processes, **(extra_config or {}),
    )
    folder.write_results("sr", metrics, config, timings.as_dict(), table)
    return folder.read_json("results.json")

