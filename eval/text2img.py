"""Shared by the COCO and reLAION benchmarks (paper Tables 2 and 3): generate one image per caption with each
configuration ("row"), write every image as it is made, then score the saved images against the real ones (FID,
patch-FID, optionally CLIP score) and time each row with the latency protocol."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from torch import nn
from uplift_diffusion.eval.common import (
    ResultsFolder,
    Timings,
    apply_limit,
    center_crop_square,
    chunks,
    generators,
    markdown_table,
    on_main_process,
    process_share,
    save_grid,
    seed_everything,
    to_tensor_uint8,
)
from uplift_diffusion.eval.latency import compile_modules, measure_latency
from uplift_diffusion.eval.metrics import FID, CLIPScorer, PatchFID
from uplift_diffusion.pipelines.common import STAGES, record_stage_times

from uplift_diffusion.utils.errors import InputError, StaleResultsError, UnavailableError
from uplift_diffusion.utils.fingerprint import module_identity
from uplift_diffusion.utils.images import load_image

PAIRS_FILE = "pairs.json"
STAGE_HEADERS = {"base s": "base", "UPLiFT s": "uplift", "refine s": "refine", "decode s": "decode"}


@dataclass
class Row:
    """One configuration of a text-to-image table.

    Attributes:
        key: folder name of its images (e.g. ``"sd15-25-uplift"``).
        model / steps / method / params_m / resolution: the table's columns.
        generate: ``(prompts, generators) -> [B, H, W, 3]`` float in [0, 1] (one generator per prompt).
        modules: the modules ``--compile`` compiles for the latency run.
        fingerprint: everything besides the caption and the seed that determines this row's images (components with
            their weights hash, steps, guidance, upscaling); saved images of another fingerprint are never reused.
    """

    key: str
    model: str
    steps: int
    method: str
    params_m: float | None
    resolution: str
    generate: Callable[[list[str], list[torch.Generator]], np.ndarray]
    modules: list[nn.Module] = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)


def pipeline_identity(pipe, skip: Sequence[str] = ()) -> dict:
    """:func:`~uplift_diffusion.utils.fingerprint.module_identity` of every component of a diffusers pipeline."""
    return {name: module_identity(component) for name, component in sorted(pipe.components.items())
            if name not in skip}


def _pipeline_modules(pipe) -> list[nn.Module]:
    return [m for m in pipe.components.values() if isinstance(m, nn.Module)]


def refine_arguments(upscale: int, refine_strength: float, refine_steps: int | None) -> dict:
    """The pipeline arguments of a refine pass (none for ``refine_strength=0``: the row is UPLiFT alone, with the
    same key, fingerprint and images); a refine pass needs UPLiFT (``upscale > 1``)."""
    if not refine_strength:
        return {}
    if upscale < 2:
        raise InputError(f"a refine pass refines UPLiFT's output: it needs upscale > 1, got upscale={upscale}")
    return dict(refine_strength=refine_strength, **({"refine_steps": refine_steps} if refine_steps else {}))


def _refine_label(refine: dict) -> tuple[str, str]:
    """(row key suffix, method) of a refine pass: ``("-refine0.3-20steps", "UPLiFT + refine 0.3 (20 steps)")``."""
    if not refine:
        return "", "UPLiFT"
    steps = refine.get("refine_steps")
    return (f"-refine{refine['refine_strength']:g}" + (f"-{steps}steps" if steps else ""),
            f"UPLiFT + refine {refine['refine_strength']:g}" + (f" ({steps} steps)" if steps else ""))


def uplift_row(pipe, steps: int, upscale: int, guidance_scale: float = 7.5, model: str = "SD1.5",
               identity: dict | None = None, pipeline_kwargs: dict | None = None, refine_strength: float = 0.0,
               refine_steps: int | None = None) -> Row:
    """A row of an :class:`~uplift_diffusion.pipelines.UPLiFTPipeline` (``upscale=1``: the plain SD 1.5 baseline).
    ``identity``: :func:`pipeline_identity` of ``pipe`` when already computed (hashing the weights takes seconds);
    ``pipeline_kwargs``: more keyword arguments of every pipeline call (recorded in the fingerprint);
    ``refine_strength`` / ``refine_steps``: UPLiFT + a refine pass (the pipeline's own arguments; 0 = UPLiFT alone)."""
    low = pipe.unet.config.sample_size * pipe.vae_scale_factor
    uplift = upscale > 1
    refine = refine_arguments(upscale, refine_strength, refine_steps)
    identity = identity if identity is not None else pipeline_identity(pipe)
    components = {k: v for k, v in identity.items() if uplift or k != "upsampler"}
    suffix, method = _refine_label(refine)

    def generate(prompts, gens):
        return pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance_scale, upscale=upscale,
                    generator=gens, output_type="np", **refine, **(pipeline_kwargs or {})).images

    return Row(
        key=f"sd15-{steps}" + ("-uplift" + suffix if uplift else ""), model=model, steps=steps,
        method=method if uplift else "-",
        params_m=pipe.upsampler.num_parameters() / 1e6 if uplift else None,
        resolution=f"{low}->{low * upscale}" if uplift else str(low), generate=generate,
        modules=_pipeline_modules(pipe) if uplift else [m for n, m in pipe.components.items()
                                                          if isinstance(m, nn.Module) and n != "upsampler"],
        fingerprint=dict(pipeline=type(pipe).__name__, components=components, steps=steps,
                         guidance_scale=guidance_scale, upscale=upscale, color_correction=True, **refine,
                         **({"pipeline_kwargs": pipeline_kwargs} if pipeline_kwargs else {})),
    )


def is_flux2(pipe) -> bool:
    """Whether ``pipe`` is one of the UPLiFT FLUX.2 pipelines (klein or dev)."""
    from uplift_diffusion.pipelines.flux2 import UPLiFTFlux2KleinPipeline, UPLiFTFlux2Pipeline

    return isinstance(pipe, (UPLiFTFlux2KleinPipeline, UPLiFTFlux2Pipeline))


def low_resolution(pipe) -> int:
    """The side the pipeline denoises at by default: SD 1.5 512, FLUX.2 1024."""
    if is_flux2(pipe):
        return pipe.default_sample_size * pipe.vae_scale_factor
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def flux2_row(pipe, steps: int | None, upscale: int, guidance_scale: float | None = None, size: int | None = None,
              model: str = "FLUX.2", identity: dict | None = None, pipeline_kwargs: dict | None = None,
              refine_strength: float = 0.0, refine_steps: int | None = None) -> Row:
    """A row of an UPLiFT FLUX.2 pipeline (:class:`~uplift_diffusion.pipelines.UPLiFTFlux2KleinPipeline` or
    ``UPLiFTFlux2Pipeline``): FLUX.2 at ``size``² and UPLiFT ``size`` -> ``upscale * size`` (``upscale=1``: the plain
    FLUX.2 baseline, decoded by its VAE).

    Args:
        pipe: the pipeline.
        steps / guidance_scale: denoising steps and guidance; ``None``: FLUX.2's recommendation for this checkpoint
            (:func:`~uplift_diffusion.pipelines.flux2.flux2_defaults`: 4 steps, no guidance when step-distilled).
        upscale: 1, 2 or 4.
        size: the low resolution (square; default the pipeline's, 1024).
        model: the table's model column.
        identity: :func:`pipeline_identity` of ``pipe`` when already computed (hashing the weights takes seconds).
        pipeline_kwargs: more keyword arguments of every pipeline call (e.g. ``max_sequence_length``; recorded in
            the fingerprint).
        refine_strength / refine_steps: UPLiFT + a refine pass (the pipeline's own arguments; 0 = UPLiFT alone).
    """
    from uplift_diffusion.pipelines.flux2 import flux2_defaults

    default_steps, default_guidance = flux2_defaults(pipe)
    steps = steps or default_steps
    guidance_scale = default_guidance if guidance_scale is None else guidance_scale
    low = size or low_resolution(pipe)
    uplift = upscale > 1
    refine = refine_arguments(upscale, refine_strength, refine_steps)
    identity = identity if identity is not None else pipeline_identity(pipe)
    uplift_parts = ("upsampler", "guide_vae")  # the baseline does not depend on them
    components = {k: v for k, v in identity.items() if uplift or k not in uplift_parts}
    suffix, method = _refine_label(refine)

    def generate(prompts, gens):
        return pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=guidance_scale, height=low, width=low,
                    upscale=upscale, generator=gens, output_type="np", **refine, **(pipeline_kwargs or {})).images

    return Row(
        key=f"flux2-{steps}" + ("-uplift" + suffix if uplift else ""), model=model, steps=steps,
        method=method if uplift else "-",
        params_m=pipe.upsampler_in_use().num_parameters() / 1e6 if uplift else None,
        resolution=f"{low}->{low * upscale}" if uplift else str(low), generate=generate,
        modules=[m for n, m in pipe.components.items() if isinstance(m, nn.Module) and (uplift or n not in
                                                                                        uplift_parts)],
        fingerprint=dict(pipeline=type(pipe).__name__, components=components, steps=steps,
                         guidance_scale=guidance_scale, upscale=upscale, height=low, width=low, color_correction=True,
                         **refine, pipeline_kwargs=pipeline_kwargs or {}),
    )


def default_rows(pipe, steps: Sequence[int | None], baseline: bool = True, guidance_scale: float | None = None,
                 size: int | None = None, pipeline_kwargs: dict | None = None, refine_strength: float = 0.0,
                 refine_steps: int | None = None) -> list[Row]:
    """For each step count: the model without upscaling (``baseline``), with UPLiFT 2x, and with UPLiFT 2x + a refine
    pass when ``refine_strength`` > 0 (``refine_steps``: its schedule's length, default the step count). SD 1.5 (an
    :class:`~uplift_diffusion.pipelines.UPLiFTPipeline`): 512 -> 1024, guidance 7.5 unless given; FLUX.2 (an UPLiFT
    FLUX.2 pipeline, :func:`flux2_row`): ``size`` (default 1024) -> 2x, its checkpoint's steps / guidance for
    ``None``. ``pipeline_kwargs``: more keyword arguments of every pipeline call."""
    rows, identity = [], pipeline_identity(pipe)
    configs = [(1, 0.0)] if baseline else []
    configs += [(2, 0.0)] + ([(2, refine_strength)] if refine_strength else [])
    for s in steps:
        for upscale, strength in configs:
            if is_flux2(pipe):
                rows.append(flux2_row(pipe, s, upscale, guidance_scale, size=size, identity=identity,
                                      pipeline_kwargs=pipeline_kwargs, refine_strength=strength,
                                      refine_steps=refine_steps))
            else:
                rows.append(uplift_row(pipe, s, upscale, 7.5 if guidance_scale is None else guidance_scale,
                                       identity=identity, pipeline_kwargs=pipeline_kwargs, refine_strength=strength,
                                       refine_steps=refine_steps))
    return rows


def pipeline_row(pipe, name: str, steps: int) -> Row:
    """A row for any diffusers text-to-image pipeline at its native resolution with its default guidance."""
    size = getattr(getattr(pipe, "unet", None), "config", None)
    size = size.sample_size * pipe.vae_scale_factor if size is not None else None

    def generate(prompts, gens):
        return pipe(prompt=prompts, num_inference_steps=steps, generator=gens, output_type="np").images

    return Row(key=name.replace("/", "--") + f"-{steps}", model=name, steps=steps, method="-", params_m=None,
               resolution=str(size) if size else "native", generate=generate, modules=_pipeline_modules(pipe),
               fingerprint=dict(pipeline=type(pipe).__name__, components=pipeline_identity(pipe), steps=steps))


def load_flux2_uplift_pipeline(source: str, upsampler, dtype: torch.dtype, guide_vae=None):
    """An UPLiFT FLUX.2 pipeline from a FLUX.2 folder / Hub id (klein or dev) plus an upsampler (``None``: the
    built-in taef2 model); offline without a local copy the error names the repo and says to pass a local folder."""
    from uplift_diffusion.pipelines.flux2 import load_flux2_pipeline

    return load_flux2_pipeline(source, upsampler=upsampler, guide_vae=guide_vae, dtype=dtype)


def load_uplift_pipeline(source: str, upsampler, dtype: torch.dtype):
    """An UPLiFTPipeline from an SD 1.5 folder / Hub id plus an upsampler (safety checker off, as in the paper's
    evaluation). Offline without a local copy the error says what to supply."""
    from uplift_diffusion.pipelines import UPLiFTPipeline

    try:
        return UPLiFTPipeline.from_pretrained(source, upsampler=upsampler, safety_checker=None,
                                              requires_safety_checker=False, dtype=dtype)
    except (OSError, ValueError) as err:
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise UnavailableError(f"could not load Stable Diffusion 1.5 from {source!r} ({reason}); "
                      f"offline, download it (unet, vae, text_encoder, tokenizer, scheduler folders) and pass "
                      f"--pipeline DIR") from None


def load_extra_pipeline(spec: str, dtype: torch.dtype, device: str | torch.device) -> Row:
    """``"ID[:STEPS]"`` (a diffusers pipeline folder or Hub id, steps default 50) -> its row."""
    from diffusers import DiffusionPipeline

    name, _, steps = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "50")
    try:
        pipe = DiffusionPipeline.from_pretrained(name, dtype=dtype).to(device)
    except (OSError, ValueError) as err:
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise UnavailableError(f"could not load the pipeline {name!r} ({reason}); offline, pass a local "
                               f"folder") from None
    pipe.set_progress_bar_config(disable=True)
    return pipeline_row(pipe, name, int(steps))


def real_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """A real image as uint8 [3, size, size]: the largest centred square, bicubic-resized to ``size``."""
    image = load_image(path)
    return to_tensor_uint8(center_crop_square(image, size))


def _check_pairs(folder: ResultsFolder, pairs: list[tuple[str, str]], overwrite: bool = False) -> None:
    """Record the sampled pairs; a folder made from other pairs is refused (its images would not match), or emptied
    with ``overwrite``. A longer list that starts with the saved one (a larger ``--limit``) extends it."""
    saved = folder.read_json(PAIRS_FILE)
    current = [[c, str(p)] for c, p in pairs]
    if saved is not None and saved[:len(current)] != current and current[:len(saved)] != saved:
        if not overwrite:
            raise StaleResultsError(f"{folder.root} holds results for other caption-image pairs (see {PAIRS_FILE}); "
                                    f"pass --overwrite to regenerate them, or use a new --output folder, or the same "
                                    f"data, seed and sample count")
        shutil.rmtree(folder.root / "images", ignore_errors=True)
        saved = None
    if saved is None or len(current) > len(saved):
        folder.write_json(PAIRS_FILE, current)


def run_text2img_benchmark(
    benchmark: str,
    pairs: Sequence[tuple[str, str | os.PathLike]],
    rows: Sequence[Row],
    output_dir: str | os.PathLike,
    headers: Sequence[str],
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    fid_factory: Callable[[], FID] | None = None,
    clip_factory: Callable[[], CLIPScorer] | None = None,
    real_size: int = 1024,
    patch_size: int = 512,
    num_crops: int = 4,
    reference_stats: str | os.PathLike | None = None,
    latency: bool = False,
    latency_batch: int = 1,
    latency_warmup: int = 3,
    latency_iterations: int = 10,
    compile: bool = False,
    extra_config: dict | None = None,
    overwrite: bool = False,
) -> dict | None:
    """Generate, score and time every row; returns the ``results.json`` content (``None`` on the processes other
    than the main one when launched with ``accelerate launch``: each generates its share of the images and extracts
    the metric features of its share, then the main process alone runs the latency protocol and writes the results).

    Args:
        benchmark: ``"coco"`` or ``"relaion"`` (recorded; names the table).
        pairs: (caption, real image path) pairs, already sampled.
        rows: the configurations (:func:`default_rows`, :func:`pipeline_row`).
        output_dir: results folder (``images/<row>/<index>.png``, ``pairs.json``, ``results.json``, ``table.md``).
        headers: table columns, from ``"Model", "Steps", "Method", "Params (M)", "Resolution", "s/img ↓",
            "CLIP ↑", "FID ↓", "p-FID ↓"``; the stage columns (:data:`STAGE_HEADERS`: seconds per image of each
            stage in the latency runs) follow them.
        limit: only the first ``limit`` pairs.
        seed: image ``i`` is generated with ``torch.Generator().manual_seed(seed + i)``.
        batch_size: prompts per pipeline call while generating.
        fid_factory: makes a fresh [`FID`] (full images and crops); ``None`` skips FID and patch-FID.
        clip_factory: makes a [`CLIPScorer`]; ``None`` skips the CLIP score.
        real_size: real images are centre-cropped and resized to this square (the generated resolution).
        patch_size / num_crops: patch-FID crops (rows whose images are not ``real_size`` get no patch-FID).
        reference_stats: folder for the real FID statistics (default ``output_dir``).
        latency / latency_batch / latency_warmup / latency_iterations / compile: the latency protocol per row (on the
            main process only, after the others finished generating: its device is not shared while it is timed),
            split into the pipeline's stages (``latency.stage_seconds_per_image``: base generation, UPLiFT, refine,
            decode; see :func:`~uplift_diffusion.pipelines.common.record_stage_times`). The stages of the images
            generated in this run are summed in ``timings`` (``generate/<row>/<stage>``) with or without it.
        extra_config: more entries for the config in ``results.json``.
        overwrite: regenerate saved images made with other settings or pairs instead of refusing the folder.
    """
    seed_everything(seed)
    folder = ResultsFolder(output_dir)
    pairs = apply_limit([(c, str(p)) for c, p in pairs], limit)
    if not pairs:
        raise InputError("no caption-image pairs to evaluate")
    keys = [r.key for r in rows]
    if len(set(keys)) != len(keys):
        raise InputError(f"rows must have distinct keys, got {keys}")
    names = [f"{i:05d}" for i in range(len(pairs))]
    captions = [c for c, _ in pairs]
    timings = Timings()

    # 1. Generate every missing image, fixed chunks (reruns form the same batches, each image its own generator).
    #    Under `accelerate launch` the main process alone checks and records the pairs and the rows' fingerprints
    #    (a refused folder stops every process before anything is written), then each generates its share
    def claim():
        _check_pairs(folder, pairs, overwrite)
        for row in rows:
            device = next((p.device.type for m in row.modules for p in m.parameters()), "cpu")
            folder.claim(row.key, dict(row.fingerprint, benchmark=benchmark, seed=seed, batch_size=batch_size,
                                       device=device), overwrite)

    on_main_process(claim)
    state = PartialState()

    def make(idx: list[int], row: Row) -> np.ndarray:
        with record_stage_times() as seconds:
            images = row.generate([captions[i] for i in idx], generators(seed, idx))
        for stage, value in seconds.items():
            timings.add(f"generate/{row.key}/{stage}", value)
        return images

    for row in rows:
        folder.generate_missing(row.key, names, batch_size, lambda idx, row=row: make(idx, row), timings,
                                desc=f"{benchmark} {row.key}")
    state.wait_for_everyone()

    # 2. Real statistics (once per data set, reusable) and per-row metrics from the saved images. Under `accelerate
    #    launch` each process extracts the features of its share of the batches; their sums are added up (gather),
    #    so every process holds the statistics of the whole set
    metrics: dict[str, dict] = {}
    batches = list(chunks(range(len(pairs)), batch_size))
    full_fid = patch_fid = None
    if fid_factory is not None:
        full_fid, patch_fid = fid_factory(), PatchFID(fid_factory(), patch_size, num_crops, seed)
        stats_dir = Path(reference_stats) if reference_stats is not None else folder.root
        key = f"{benchmark}:{real_size}:n={len(pairs)}:seed={seed}:" + ",".join(p for _, p in pairs)
        files = (stats_dir / f"fid_real_{full_fid.name}.npz", stats_dir / f"pfid_real_{full_fid.name}.npz")
        pkey = f"{key}:{patch_size}x{num_crops}"
        if not (full_fid.load_reference(files[0], key) and patch_fid.fid.load_reference(files[1], pkey)):
            full_fid, patch_fid = fid_factory(), PatchFID(fid_factory(), patch_size, num_crops, seed)
            with timings("metrics/real"):
                for idx in process_share(batches, f"{benchmark} real"):
                    real = torch.stack([real_image(pairs[i][1], real_size) for i in idx])
                    full_fid.update(real, real=True)
                    patch_fid.update(real, idx, real=True)
                full_fid.gather(real=True), patch_fid.fid.gather(real=True)
            if state.is_main_process:
                full_fid.save_reference(files[0], key)
                patch_fid.fid.save_reference(files[1], pkey)
    clip = clip_factory() if clip_factory is not None else None
    for row in rows:
        entry: dict = dict(model=row.model, steps=row.steps, method=row.method, params_m=row.params_m,
                           resolution=row.resolution, num_images=len(pairs))
        if clip is not None:
            clip.metric.reset()
        if full_fid is not None:
            full_fid.reset_fake(), patch_fid.fid.reset_fake()
        with timings(f"metrics/{row.key}"):
            for idx in process_share(batches, f"{benchmark} metrics {row.key}"):
                fake = torch.stack([folder.load(row.key, names[i]) for i in idx])
                if clip is not None:
                    clip.update(fake, [captions[i] for i in idx])
                if full_fid is not None:
                    full_fid.update(fake, real=False)
                    if fake.shape[-1] == real_size and fake.shape[-2] == real_size:
                        patch_fid.update(fake, idx, real=False)
            if clip is not None:
                clip.gather()
            if full_fid is not None:
                full_fid.gather(real=False), patch_fid.fid.gather(real=False)
        if clip is not None:
            entry["clip_score"] = clip.compute()
        if full_fid is not None:
            entry["fid"] = full_fid.compute()
            entry["patch_fid"] = patch_fid.compute() if patch_fid.fid.num_fake else None
        metrics[row.key] = entry
    timings.gather()
    if not state.is_main_process:
        return None

    # 3. Latency per row (appendix B.2: optional torch.compile, 3 warm-up + 10 timed batches), split into stages
    if latency:
        prompts = [captions[i % len(captions)] for i in range(latency_batch)]
        for row in rows:
            if compile:
                compile_modules(row.modules)
            param = next((p for m in row.modules for p in m.parameters()), torch.empty(0))
            calls: list[dict[str, float]] = []

            def timed_call(row=row, calls=calls):
                with record_stage_times() as seconds:
                    row.generate(prompts, generators(seed, range(latency_batch)))
                calls.append(seconds)

            entry = measure_latency(timed_call, device=param.device, dtype=param.dtype, batch_size=latency_batch,
                                    warmup=latency_warmup, iterations=latency_iterations, compiled=compile)
            timed = calls[-latency_iterations:]
            entry["stage_seconds_per_image"] = {
                stage: sum(c.get(stage, 0.0) for c in timed) / len(timed) / latency_batch
                for stage in STAGES if any(stage in c for c in timed)}
            metrics[row.key]["latency"] = entry

    # 4. Table in the paper's layout, grid, results.json
    columns = {"Model": "model", "Steps": "steps", "Method": "method", "Params (M)": "params_m",
               "Resolution": "resolution", "CLIP ↑": "clip_score", "FID ↓": "fid", "p-FID ↓": "patch_fid"}
    table_rows = []
    for row in rows:
        m, stages = metrics[row.key], metrics[row.key].get("latency", {}).get("stage_seconds_per_image", {})
        table_rows.append([m.get("latency", {}).get("seconds_per_image") if h.startswith("s/img")
                           else m.get(columns[h]) for h in headers]
                          + [stages.get(stage) for stage in STAGE_HEADERS.values()])
    table = (f"{benchmark}: {len(pairs)} captions\n\n" + markdown_table([*headers, *STAGE_HEADERS], table_rows)
             + "\ns/img and the stage columns: seconds per image of the latency runs (--latency); base = "
               "denoising at the low resolution, UPLiFT = the guide's decode + the UPLiFT steps, refine = the "
               "refine pass, decode = the output's decode + colour correction\n")
    grid = [[real_image(pairs[i][1], 256)] + [folder.load(r.key, names[i]) for r in rows]
            for i in range(min(4, len(pairs)))]
    save_grid(grid, folder.root / "samples.png")
    config = dict(num_pairs=len(pairs), limit=limit, seed=seed, batch_size=batch_size, real_size=real_size,
                  patch_size=patch_size, num_crops=num_crops, rows=[r.key for r in rows],
                  fid=full_fid.name if full_fid is not None else None, clip=clip is not None,
                  latency_batch=latency_batch, compile=compile, grid_columns=["real"] + [r.key for r in rows],
                  real_images="largest centred square, bicubic resize to real_size",
                  num_processes=state.num_processes, **(extra_config or {}))
    folder.write_results(benchmark, metrics, config, timings.as_dict(), table)
    return folder.read_json("results.json")
