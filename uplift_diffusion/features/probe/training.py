"""Linear probes on frozen pixel-dense features: the features of one method (UPLiFT or a bilinear / nearest
baseline), the probes (1x1 conv; 256-bin depth head), their resumable training loop and their evaluation."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...utils.errors import InputError, StaleResultsError
from ...utils.io import atomic_write
from .datasets import IGNORE_INDEX, DenseLabelDataset
from .metrics import confusion_matrix, depth_scores, segmentation_scores

METHODS = ("nearest", "bilinear", "uplift")


def iterations_for(grid: int, size: int) -> int:
    """Fewest 2x steps that take a ``grid``-token side to at least ``size`` pixels."""
    return max(1, math.ceil(math.log2(size / grid)))


class DenseFeatures:
    """Pixel-dense features of a batch by one method: ``"uplift"``, ``"bilinear"`` or ``"nearest"``."""

    def __init__(self, extractor, method: str):
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
        self.extractor, self.method = extractor, method
        self.seconds, self.images = 0.0, 0  # upsampling time only (backbone excluded)

    @property
    def num_parameters(self) -> int:
        if self.method != "uplift":
            return 0
        return sum(p.numel() for p in self.extractor.upsampler.parameters())

    @torch.no_grad()
    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        ex = self.extractor
        size = tuple(images01.shape[-2:])
        normalised, _ = ex.prepare_images(images01)
        backbone = ex.backbone(normalised.to(next(ex.backbone.parameters()).dtype))  # [B, C, h, w]
        _sync(normalised.device)
        start = time.perf_counter()
        if self.method == "uplift":
            steps = iterations_for(backbone.shape[-2], size[0])
            dense = ex.upsampler(normalised, backbone.to(ex.upsampler.dtype), iterations=steps, output_size=size)
        else:
            dense = ex.upsample_baseline(backbone, size, self.method)
        _sync(normalised.device)
        self.seconds += time.perf_counter() - start
        self.images += images01.shape[0]
        return dense.float()  # [B, C, S, S]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DepthProbe(nn.Module):
    """1x1 conv to ``bins`` depth-bin weights; depth = the weights' (ReLU + 0.1, normalised) mean of the bin centres."""

    def __init__(self, channels: int, min_depth: float, max_depth: float, bins: int = 256):
        super().__init__()
        self.conv = nn.Conv2d(channels, bins, kernel_size=1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, bins), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights = F.relu(self.conv(features)) + 0.1  # [B, bins, H, W]
        weights = weights / weights.sum(1, keepdim=True)
        return torch.einsum("bkhw,k->bhw", weights, self.centres)  # [B, H, W]


def scale_invariant_log_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                             lam: float = 0.15) -> torch.Tensor:
    """sqrt(Var(g) + lam * mean(g)^2) with g = log(pred) - log(target) over the valid pixels."""
    g = torch.log(pred[valid].clamp_min(1e-6)) - torch.log(target[valid])
    if g.numel() < 2:
        return pred.sum() * 0.0
    return torch.sqrt(g.var(unbiased=False) + lam * g.mean() ** 2 + 1e-12)


@dataclass
class ProbeConfig:
    """Linear-probe training settings (defaults: JAFAR's public evaluation config)."""

    task: str = "seg"
    epochs: int = 20
    batch_size: int = 2
    lr: float = 5e-4
    weight_decay: float = 1e-2
    seed: int = 0
    hflip: bool = True
    num_workers: int = 0
    checkpoint_every: int = 200
    min_depth: float = 1e-3
    max_depth: float = 10.0
    depth_bins: int = 256


def _make_probe(config: ProbeConfig, channels: int, num_classes: int) -> nn.Module:
    if config.task == "seg":
        return nn.Conv2d(channels, num_classes, kernel_size=1)
    return DepthProbe(channels, config.min_depth, config.max_depth, config.depth_bins)


def _loss(config: ProbeConfig, probe: nn.Module, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if config.task == "seg":
        return F.cross_entropy(probe(features), target, ignore_index=IGNORE_INDEX)
    valid = (target > config.min_depth) & (target < config.max_depth)
    return scale_invariant_log_loss(probe(features), target, valid)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train_probe(features: DenseFeatures, dataset: DenseLabelDataset, config: ProbeConfig, state_path: Path,
                device: torch.device, max_steps: int | None = None, desc: str = "probe") -> nn.Module | None:
    """Train a linear probe on frozen features, resuming from ``state_path`` when it exists.

    The batch order of every epoch and every flip are functions of (seed, epoch, step), so an interrupted run that
    resumes gives the same probe as an uninterrupted one. ``max_steps`` stops early (returns ``None``) after that
    many steps in this call, leaving a checkpoint (used to test resuming).
    """
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the global RNG alone
        torch.manual_seed(config.seed)
        probe = _make_probe(config, features.extractor.feature_dim, dataset.num_classes).to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = math.ceil(len(dataset) / config.batch_size)
    total = config.epochs * batches
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    step = 0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("config") != asdict(config) or state.get("num_items") != len(dataset):
            raise StaleResultsError(f"{state_path} was written with other settings or another dataset size; delete "
                                    f"it or use another output folder")
        probe.load_state_dict(state["probe"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])

    def save(step: int) -> None:
        state = {"probe": probe.state_dict(), "optimizer": optimizer.state_dict(), "scheduler":
                 scheduler.state_dict(), "step": step, "config": asdict(config), "num_items": len(dataset)}
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))

    probe.train()
    done_here = 0
    progress = tqdm(total=total, initial=step, desc=desc, leave=False, disable=total < 2)
    while step < total:
        epoch, index = divmod(step, batches)
        order = _epoch_order(len(dataset), config.seed, epoch)
        subset = torch.utils.data.Subset(dataset, order[index * config.batch_size:].tolist())
        loader = torch.utils.data.DataLoader(subset, batch_size=config.batch_size, num_workers=config.num_workers)
        for images, target in loader:
            images, target = images.to(device), target.to(device)
            if config.hflip and torch.rand((), generator=torch.Generator().manual_seed(config.seed + step)) < 0.5:
                images, target = images.flip(-1), target.flip(-1)
            loss = _loss(config, probe, features(images), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            done_here += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch + 1)
            if step % config.checkpoint_every == 0 or step % batches == 0:
                save(step)
            if max_steps is not None and done_here >= max_steps and step < total:
                save(step)
                progress.close()
                return None
    progress.close()
    return probe.eval()


@torch.no_grad()
def evaluate_probe(features: DenseFeatures, probe: nn.Module, dataset: DenseLabelDataset, config: ProbeConfig,
                   device: torch.device, desc: str = "eval") -> dict:
    """Segmentation: mIoU / pixel accuracy / per-class IoU from one confusion matrix over the whole set.
    Depth: δ1 and RMSE per image, averaged over images."""
    probe.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=config.num_workers)
    confmat = torch.zeros(dataset.num_classes, dataset.num_classes, dtype=torch.int64)
    depth = []
    features.seconds, features.images = 0.0, 0
    for images, target in tqdm(loader, desc=desc, leave=False, disable=len(loader) < 2):
        images, target = images.to(device), target.to(device)
        prediction = probe(features(images))
        if config.task == "seg":
            confmat += confusion_matrix(prediction.argmax(1), target, dataset.num_classes)
        else:
            depth += [depth_scores(p, t, config.min_depth, config.max_depth)
                      for p, t in zip(prediction, target, strict=True)]
    if config.task == "seg":
        scores = segmentation_scores(confmat)
    else:
        scores = {k: float(np.nanmean([d[k] for d in depth])) for k in ("delta1", "rmse")}
    scores["ms_per_image"] = 1000.0 * features.seconds / max(features.images, 1)
    return scores
