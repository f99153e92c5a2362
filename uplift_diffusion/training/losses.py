"""The UPLiFT training objective: multi-depth, multi-step feature reconstruction (paper §3.3, eq. 1-5).

For a depth d the input is the backbone feature of the image at ``1/2**d`` (plus optional Gaussian augmentation on
a *copy*), the model runs d shared-weight 2x steps guided by the image at ``1/2**d``, and step k is compared (mean
squared error) with the backbone feature of the image at ``1/2**(d-k)``:

``L_d = sum_{k=1..d} MSE(step_k, F_{1/2**(d-k)})`` (eq. 4) and ``L = sum_{d in D} L_d`` (eq. 5).

Beyond the paper, a *decoder-aware* term (:class:`PixelObjective`) can join it for VAE backbones: the frozen decoder
turns the last step of a depth into pixels, which are compared with the full-resolution crop (L1 / L2 / Charbonnier,
plus an optional edge term on image gradients). The decoder amplifies small high-frequency latent errors into a
visible grid; the latent MSE cannot see that, the pixel term does. The paper's latent-only loss stays the default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..color import bicubic_upscale, detail_transfer, luma
from ..utils.deprecation import warn_renamed
from .config import PIXEL_LOSSES, LossConfig

Generators = torch.Generator | list[torch.Generator] | None


def augment_features(features: torch.Tensor, sigma: float, generator: Generators = None) -> torch.Tensor:
    """``features + sigma * N(0, 1)`` as a NEW tensor (the input at one depth is the target at another, so the
    original must never change). ``sigma == 0`` returns a copy. ``generator``: one, one per batch item (each item's
    noise then depends on its own generator only, not on the batch it shares) or ``None`` (the global RNG)."""
    if sigma == 0:
        return features.clone()
    noise = randn_tensor(tuple(features.shape), generator=generator, device=features.device, dtype=torch.float32)
    return features + sigma * noise.to(features.dtype)


def pixel_distance(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean pixel distance of two [B, 3, H, W] images: ``"l1"``, ``"l2"`` (MSE) or ``"charbonnier"`` (smooth L1)."""
    diff = pred.float() - target.float()
    if kind == "l1":
        return diff.abs().mean()
    if kind == "l2":
        return diff.square().mean()
    if kind == "charbonnier":
        return (diff.square() + 1e-6).sqrt().mean()
    raise ValueError(f"pixel loss must be one of {PIXEL_LOSSES}, got {kind!r}")


def grid_excess(pred: torch.Tensor, target: torch.Tensor, period: int = 8) -> torch.Tensor:
    """Mean excess of ``pred``'s luma spectrum magnitude over ``target``'s on the harmonics of a ``period``-pixel grid
    (every frequency whose row or column index is a non-zero multiple of ``size / period``), per pixel. A latent
    upsampler whose output the decoder turns into a mesh concentrates energy exactly there; a sharper or blurrier
    picture of the right content does not, and less energy than the target is not charged (that is the pixel
    term's job)."""
    def centred_luma(x: torch.Tensor) -> torch.Tensor:
        y = luma(x.float())
        return y - y.mean((-1, -2), keepdim=True)

    magnitude_p = torch.fft.fft2(centred_luma(pred), norm="ortho").abs()
    magnitude_t = torch.fft.fft2(centred_luma(target), norm="ortho").abs()
    h, w = magnitude_p.shape[-2:]
    mask = torch.zeros(h, w, dtype=torch.bool, device=pred.device)
    rows = [k * h // period for k in range(1, period) if (k * h) % period == 0]
    cols = [k * w // period for k in range(1, period) if (k * w) % period == 0]
    mask[rows, :] = True
    mask[:, cols] = True
    if not mask.any():
        return pred.new_zeros(())
    excess = (magnitude_p - magnitude_t).clamp_min(0)[..., mask]  # [B, lines]
    return excess.sum(-1).mean() / (h * w) ** 0.5


def edge_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance of the horizontal and vertical finite differences: penalises grids and blurred edges alike."""
    p, t = pred.float(), target.float()
    dx = (p.diff(dim=-1) - t.diff(dim=-1)).abs().mean()
    dy = (p.diff(dim=-2) - t.diff(dim=-2)).abs().mean()
    return dx + dy


@dataclass
class PixelObjective:
    """The decoder-aware term: ``weight * dist(decode(step_d), I) + edge_weight * edge(decode(step_d), I)``.

    Decoding (and back-propagating through) a whole crop costs several times the UPLiFT step itself, so the term
    can be taken on one random window of ``window`` x ``window`` latents per batch; the outer ``margin`` latents of
    the window are decoded but not compared, because the decoder sees zero padding there instead of neighbours.

    Args:
        decode: differentiable map from features [B, C, h, w] to RGB [B, 3, h * patch, w * patch] in [0, 1]
            (a frozen VAE decoder; gradients flow to the features only).
        patch_size: pixels per feature token of the decoder.
        weight: weight of the pixel distance.
        kind: ``"l1"``, ``"l2"`` or ``"charbonnier"``.
        edge_weight: weight of :func:`edge_distance` (0 disables it).
        depths: depths whose last step is decoded (``None``: every training depth).
        window: side of the decoded latent window (``None``: the whole feature map).
        margin: latents at each side of the window excluded from the comparison (where the window is not at the
            border of the feature map).
        color_correction: ``"none"`` or ``"detail"``: compare what the pipeline outputs with
            ``ColorCorrection(mode="detail")`` (bicubic low-res input + the decoded image's high frequencies), so the
            model learns exactly the detail the input lacks.
        detail_sigma: sigma of that correction in units of the upscaling factor.
        items: decode only the first this many items of the batch (``None``: all); batches are in random order.
        schedule: ``"all"`` (every pixel depth at every step) or ``"cycle"`` (one pixel depth per step, in turn).
        grid_weight: weight of :func:`grid_excess` (0 disables it).
    """

    decode: Callable[[torch.Tensor], torch.Tensor]
    patch_size: int = 8
    weight: float = 1.0
    kind: str = "l1"
    edge_weight: float = 0.0
    depths: Sequence[int] | None = None
    window: int | None = None
    margin: int = 0
    color_correction: str = "none"
    detail_sigma: float = 0.5
    items: int | None = None
    schedule: str = "all"
    grid_weight: float = 0.0

    @classmethod
    def from_config(cls, decode: Callable[[torch.Tensor], torch.Tensor], patch_size: int,
                    loss: LossConfig) -> PixelObjective:
        """The term the ``pixel_*`` fields of ``loss`` describe."""
        return cls(decode, patch_size, weight=loss.pixel_weight, kind=loss.pixel_loss, edge_weight=loss.edge_weight,
                   depths=loss.pixel_depths, window=loss.pixel_window, margin=loss.pixel_margin,
                   color_correction=loss.pixel_color_correction,
                   detail_sigma=loss.detail_sigma, items=loss.pixel_items, schedule=loss.pixel_depth_schedule,
                   grid_weight=loss.grid_weight)

    def __post_init__(self):
        if self.color_correction is None:
            warn_renamed("color_correction=None", 'color_correction="none"')
            self.color_correction = "none"

    def applies_to(self, depth: int) -> bool:
        """Whether ``depth`` ever takes the term (the loss log's columns)."""
        return self.depths is None or depth in self.depths

    def active(self, depth: int, training_depths: Sequence[int], step: int) -> bool:
        """Whether ``depth`` takes the term at ``step``: always (``"all"``) or in turn (``"cycle"``)."""
        if not self.applies_to(depth):
            return False
        if self.schedule == "all":
            return True
        cycle = [d for d in training_depths if self.applies_to(d)]
        return cycle[step % len(cycle)] == depth

    def _window(self, h: int, w: int, generator: torch.Generator | None) -> tuple[slice, slice, slice, slice]:
        """Latent slices of the decoded window and pixel slices (inside the decoded window) that are compared."""
        spans, compare = [], []
        for size in (h, w):
            side = size if self.window is None else min(self.window, size)
            start = int(torch.randint(0, size - side + 1, (1,), generator=generator)) if side < size else 0
            lo = 0 if start == 0 else self.margin  # no margin where the window touches the map's border
            hi = side if start + side == size else side - self.margin
            spans.append(slice(start, start + side))
            compare.append(slice(lo * self.patch_size, hi * self.patch_size))
        return spans[0], spans[1], compare[0], compare[1]

    def __call__(self, features: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None,
                 low_res: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Weighted terms ``{"px": ..., "edge": ...}`` of decoded ``features`` against ``target`` [B, 3, H, W]
        (``low_res``: the model's low-res input image, needed by ``color_correction="detail"``)."""
        ys, xs, cy, cx = self._window(*features.shape[-2:], generator)
        if self.items is not None:
            features, target = features[: self.items], target[: self.items]
            low_res = None if low_res is None else low_res[: self.items]
        p = self.patch_size
        window = (..., slice(ys.start * p, ys.stop * p), slice(xs.start * p, xs.stop * p))
        pixels = self.decode(features[..., ys, xs])  # [B, 3, h_win * p, w_win * p]
        if self.color_correction == "detail":
            if low_res is None:
                raise ValueError("color_correction='detail' needs the low-res input image")
            reference_up = bicubic_upscale(low_res.float(), tuple(target.shape[-2:]))[window]
            scale = target.shape[-1] / low_res.shape[-1]
            pixels = detail_transfer(pixels, reference_up, self.detail_sigma * scale)
        pixels, target = pixels[..., cy, cx], target[window][..., cy, cx]  # the compared part
        terms = {"px": self.weight * pixel_distance(pixels, target, self.kind)}
        if self.edge_weight > 0:
            terms["edge"] = self.edge_weight * edge_distance(pixels, target)
        if self.grid_weight > 0:
            terms["grid"] = self.grid_weight * grid_excess(pixels, target, p)
        return terms


def loss_term_names(depths: Sequence[int], pixel: PixelObjective | None = None) -> list[str]:
    """Keys of the terms :func:`multi_depth_loss` returns, in order (the columns of the loss log)."""
    names = []
    for d in depths:
        names += [f"d{d}_k{k}" for k in range(1, d + 1)]
        if pixel is not None and pixel.applies_to(d):
            names.append(f"d{d}_px")
            if pixel.edge_weight > 0:
                names.append(f"d{d}_edge")
            if pixel.grid_weight > 0:
                names.append(f"d{d}_grid")
    return names


def multi_depth_loss(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    features: Sequence[torch.Tensor],
    depths: Sequence[int],
    noise_sigma: float = 0.0,
    generator: Generators = None,
    latent_weight: float = 1.0,
    pixel: PixelObjective | None = None,
    batch_generator: torch.Generator | None = None,
    guides: Sequence[torch.Tensor | None] | None = None,
    step: int = 0,
    decoded: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Paper eq. 4-5 for one batch, plus the optional decoder-aware pixel term.

    Args:
        model: an :class:`~uplift_diffusion.UPLiFTModel`.
        images: the image pyramid ``[I, I/2, ..., I/2**max(depths)]``, each [B, 3, H/2**j, W/2**j], RGB in [0, 1]
            (normalised here with ``model.normalize_image``).
        features: backbone features of those images, ``[F_1, F_1/2, ...]``, each [B, C, h/2**j, w/2**j].
        depths: training depths D.
        noise_sigma: standard deviation of the input augmentation (added to a copy of ``features[d]``).
        generator: RNG of the augmentation and of the model's noise channels: one ``torch.Generator``, one per batch
            item, or ``None`` (the global RNG). One per item makes an item's draws independent of how the batch is
            split across processes.
        latent_weight: weight of every latent MSE term (1 = the paper).
        pixel: the decoder-aware term (``None`` = the paper's latent-only loss): the last step of each depth,
            decoded, against the full-resolution image ``I``.
        batch_generator: RNG of the draws shared by the whole batch (the pixel term's window); ``None``: ``generator``
            when that is a single one, else the global RNG.
        guides: the images that guide the model at each pyramid level instead of ``images`` (e.g. the decode of
            the low-res features, as in generation); ``None`` entries (or ``guides=None``) use ``images``. The
            pixel term's colour correction then starts from the guide too, as a pipeline's does.
        step: the optimizer step (the pixel term's ``"cycle"`` schedule reads it).
        decoded: [B] bool, which items' ``guides`` are decodes of their features rather than photos (what a model
            with the ``"decoded"`` guide condition is told); ``None``: none are.

    Returns:
        ``(loss, terms)``: the total loss and every weighted term, keyed as :func:`loss_term_names`; terms a step
        skips (``"cycle"``) are reported as 0 (detached).
    """
    if max(depths) >= len(images) or max(depths) >= len(features):
        raise ValueError(f"depths {list(depths)} need {max(depths) + 1} pyramid levels, got {len(images)} images "
                         f"and {len(features)} feature maps")
    if batch_generator is None and isinstance(generator, torch.Generator):
        batch_generator = generator
    total = 0.0
    terms: dict[str, torch.Tensor] = {}
    for d in depths:
        x = augment_features(features[d], noise_sigma, generator)  # [B, C, h/2**d, w/2**d]
        told = guides is not None and guides[d] is not None
        guide = guides[d] if told else images[d]
        image = model.normalize_image(guide, decoded if told and decoded is not None else False)  # [B, 3+, ...]
        steps = model(image, x, iterations=d, return_all_steps=True, generator=generator)
        for k, out in enumerate(steps, start=1):
            term = latent_weight * F.mse_loss(out.float(), features[d - k].float())  # step k vs F at 1/2**(d-k)
            terms[f"d{d}_k{k}"] = term.detach()
            total = total + term
        if pixel is not None and pixel.active(d, depths, step):
            # the last step is at full resolution: decoded, it is compared with I [B, 3, H, W]
            for name, term in pixel(steps[-1], images[0], batch_generator, guide).items():
                terms[f"d{d}_{name}"] = term.detach()
                total = total + term
        elif pixel is not None and pixel.applies_to(d):
            zero = torch.zeros((), device=x.device)
            terms.update({f"d{d}_{name}": zero for name in ("px", "edge", "grid")
                          if name == "px" or getattr(pixel, f"{name}_weight") > 0})
    return total, terms


class UPLiFTTrainingObjective(nn.Module):
    """The model plus its loss as one module, so that ``accelerate`` / DDP see a single forward per step.

    Args:
        model: the UPLiFT model being trained.
        depths: training depths D.
        noise_sigma: input augmentation strength.
        latent_weight: weight of the latent terms.
        pixel: the optional decoder-aware term (its decoder is not a submodule: it stays frozen and outside DDP).
    """

    def __init__(self, model: nn.Module, depths: Sequence[int], noise_sigma: float = 0.0,
                 latent_weight: float = 1.0, pixel: PixelObjective | None = None):
        super().__init__()
        self.model = model
        self.depths = list(depths)
        self.noise_sigma = noise_sigma
        self.latent_weight = latent_weight
        self.pixel = pixel

    def forward(self, images: Sequence[torch.Tensor], features: Sequence[torch.Tensor], generator: Generators = None,
                batch_generator: torch.Generator | None = None, guides: Sequence[torch.Tensor | None] | None = None,
                step: int = 0, decoded: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return multi_depth_loss(self.model, images, features, self.depths, self.noise_sigma, generator,
                                self.latent_weight, self.pixel, batch_generator, guides, step, decoded)
