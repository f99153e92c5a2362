"""Memory one training step needs, estimated before the first step, and the refusal of a config that cannot fit.

A step holds, at its peak: every training depth's activations (the loss of all depths is summed before the backward
pass, so their graphs live together), the image pyramid and its backbone features, the backbone's encoder working
set, the decoder-aware pixel term's decode (when on), and the weights with their gradients and Adam's two moments.
Activations are counted from the model's widths: each block keeps its input and a few maps of its width per pixel for
the backward pass. The constants were fitted to the peak RSS rise of one run's first step measured on CPU with the
real taef2 backbone (tiny-vae and the taef2_bsds widths, crops 64-512, batches 1-4, depths [1] to [1, 2, 3], the
pixel term on a window and on the whole crop): the estimate is 1.07x-1.53x of each measured peak
(tests/test_train_memory.py measures two small configs against 1x-2x).
The backbone's working set and the objective's activations do not add up: the objective reuses the freed memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..backbones.vae import available_memory
from .config import TrainConfig

_FLOAT = 4  # bytes: activations are counted in float32 (mixed precision keeps float32 masters and norm statistics)
# Maps of a block's width that autograd keeps per 3x3 conv -> norm -> ReLU triple: LayerNorm (computed in float32)
# keeps its centred input, the normalised map and the ReLU output; BatchNorm its input and the ReLU output.
_SAVED_PER_CONV = {"layer": 4, "batch": 2}
_BACKWARD = 1.25  # the backward pass adds gradient maps (and the allocator its slack) to the saved activations
# A first step's cost whatever its size: oneDNN's kernels and scratch buffers, the data loader, the checkpoint write
# (measured 40-47 MiB on the smallest configs).
_FIRST_STEP = 56 * 2**20
_GENERIC_ENCODE_BYTES_PER_PIXEL = 1100  # a backbone without its own measured model (cf. TAEF2.encode_memory)
_DECODE_TRAIN_FACTOR = 3  # a differentiable decode keeps its activations for the backward pass: ~3x inference's


def _group_channels(in_channels: int, spec: dict, norm_type: str) -> int:
    """Channels kept per pixel by a :class:`~uplift_diffusion.blocks.BlockGroup` for the backward pass."""
    per_conv = _SAVED_PER_CONV.get(norm_type, 4)
    total, channels = 0, in_channels
    for _ in range(spec["num_blocks"]):
        total += channels + (per_conv * spec["num_convs"] + 1) * spec["out_channels"]
        channels = spec["out_channels"]
    return total


def _objective_bytes_per_item(config: dict, crop_size: int, depths: Sequence[int]) -> int:
    """Activations one batch item keeps through :func:`~uplift_diffusion.training.losses.multi_depth_loss`'s forward
    pass (all depths together), from an :class:`~uplift_diffusion.UPLiFTModel` config."""
    norm, c, noise = config["norm_type"], config["in_channels"], config["noise_channels"]
    encoder, (first, second) = config["encoder_blocks"], config["decoder_blocks"]
    refiner, patch, n = config.get("refiner_blocks"), config["patch_size"], config["neighbourhood_size"]
    guide = [g["out_channels"] for g in encoder]
    encoder_channels, width = 0, config.get("image_channels", 3) + len(config.get("guide_conditions") or ())
    for spec in encoder:  # every group at the guide image's full size
        encoder_channels += _group_channels(width, spec, norm)
        width = spec["out_channels"]
    total = 0
    for d in depths:
        side = crop_size / 2**d * (16 / 14 if patch == 14 else 1)  # patch-14 models resize the guide to 16 px tokens
        total += (encoder_channels + 3) * side**2
        for k in range(1, d + 1):
            low = (crop_size / patch / 2 ** (d - k + 1)) ** 2  # the step's input latents; it outputs 4x as many
            total += _group_channels(c + guide[-1] + noise, first, norm) * low
            per_output = (3 * first["out_channels"]  # the 2x step: transposed conv, bilinear skip, their sum
                          + _group_channels(first["out_channels"] + guide[-2] + noise, second, norm)
                          + 3 * n + 2 * c + second["out_channels"]  # the attender: logits, softmax, output
                          + 2 * c)  # the step's loss term
            if refiner is not None:
                per_output += _group_channels(c + guide[-1] + noise, refiner, norm) + c
            total += per_output * 4 * low
    return int(_FLOAT * total)


def _encode_bytes(backbone, size: int, batch: int) -> int:
    """The backbone's working memory for one batch of ``size`` x ``size`` images (no gradients)."""
    vae = getattr(backbone, "vae", None)
    if vae is not None and hasattr(vae, "encode_memory"):
        return int(vae.encode_memory(size, size, None, batch))
    return _GENERIC_ENCODE_BYTES_PER_PIXEL * size * size * batch


def _pixel_term_bytes(config: TrainConfig, backbone, batch: int) -> int:
    """The decoder-aware pixel term: a differentiable decode of its window, per active depth."""
    loss = config.loss
    if loss.pixel_weight <= 0:
        return 0
    latents = config.data.crop_size // backbone.patch_size
    window = min(loss.pixel_window or latents, latents)
    items = min(loss.pixel_items or batch, batch)
    depths = 1 if loss.pixel_depth_schedule == "cycle" else len(loss.pixel_depths or loss.depths)
    vae = getattr(backbone, "vae", None)
    if vae is not None and hasattr(vae, "decode_memory"):
        decode = vae.decode_memory(window, window, None, items)
    else:
        decode = _GENERIC_ENCODE_BYTES_PER_PIXEL * (window * backbone.patch_size) ** 2 * items
    return int(_DECODE_TRAIN_FACTOR * decode * depths)


def estimate_step_memory(config: TrainConfig, model, backbone, batch: int) -> int:
    """Bytes one training step of ``batch`` items (one process's share) needs above what the loaded model and backbone
    already take.

    Args:
        config: the run's config (crop size, depths, the pixel term).
        model: the :class:`~uplift_diffusion.UPLiFTModel` being trained (its widths and depths are read).
        backbone: the run's :class:`~uplift_diffusion.training.backbones.FeatureBackbone`.
        batch: items per step in this process.
    """
    size, levels = config.data.crop_size, max(config.loss.depths)
    pyramid = sum((size / 2**j) ** 2 for j in range(levels + 1))  # pixels of one item's image pyramid
    images = 2 * 3 * _FLOAT * pyramid * batch  # the loader's batch and its copy on the device
    features = backbone.channels * _FLOAT * pyramid / backbone.patch_size**2 * batch
    objective = _BACKWARD * _objective_bytes_per_item(dict(model.config), size, config.loss.depths) * batch
    parameters = 4 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights, grads, Adam's m, v
    # The backbone's working set is freed before the objective runs, and the objective reuses it (measured).
    work = max(_encode_bytes(backbone, size, batch), objective + _pixel_term_bytes(config, backbone, batch))
    return int(_FIRST_STEP + images + features + parameters + work)


def device_memory_available(device: torch.device) -> int | None:
    """Bytes free for this process on ``device``: the accelerator's free memory, or the system's (CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_memory() if device.type == "cpu" else None


def step_memory_advice(config: TrainConfig, model, backbone, batch: int, processes: int,
                       available: int | None) -> str | None:
    """``None`` when a step fits in ``available`` bytes (``None``: unknown, nothing is refused), else one line: the
    estimate, what is available, and the value to lower (the largest ``batch_size`` that fits, else
    ``data.crop_size``).

    Args:
        config: the run's config.
        model: the model being trained.
        backbone: the run's feature backbone.
        batch: items per step in each process.
        processes: processes sharing ``available`` (those of this machine on a CPU run; 1 on an accelerator).
        available: bytes available to those processes together.
    """
    if available is None:
        return None
    need = processes * estimate_step_memory(config, model, backbone, batch)
    if need <= available:
        return None
    gib = 2**30
    size = config.data.crop_size
    text = (f"one training step (batch_size {config.batch_size}, data.crop_size {size}, loss.depths "
            f"{list(config.loss.depths)}) needs about {need / gib:.1f} GiB of memory; {available / gib:.1f} GiB is "
            f"available")
    fits = [b for b in range(batch - 1, 0, -1)
            if processes * estimate_step_memory(config, model, backbone, b) <= available][:1]
    if fits:
        return f"{text}: lower batch_size to {fits[0] * processes} or less (or data.crop_size)"
    step = backbone.patch_size * 2 ** max(config.loss.depths)  # crops stay multiples of the coarsest level
    original = config.data.crop_size
    try:
        for crop in range((size - 1) // step * step, 0, -step):
            config.data.crop_size = crop
            if processes * estimate_step_memory(config, model, backbone, 1) <= available:
                return (f"{text}: lower data.crop_size to {crop} or less (at batch_size {processes}) or train on a "
                        f"machine with more memory")
    finally:
        config.data.crop_size = original
    return f"{text}: even the smallest crop does not fit; free memory or train on a machine with more"


__all__ = ["device_memory_available", "estimate_step_memory", "step_memory_advice"]
