"""Linear-probe evaluation of pixel-dense features (the JAFAR protocol that the UPLiFT paper follows, §4, App. A).

A frozen backbone + upsampler turns ``size``x``size`` images (448 in the paper) into ``size``x``size`` features; a
1x1 convolution (the linear probe) is trained on top for semantic segmentation (cross-entropy, label 255 ignored;
mIoU and pixel accuracy from a confusion matrix) or monocular depth (256 depth bins, scale-invariant log loss; δ1
and RMSE). The baselines "nearest" and "bilinear" upsample the backbone features directly. Everything is resumable:
probe training state is checkpointed atomically, finished probes are kept as safetensors, and the results JSON /
Markdown table (like the paper's Table 1) are rewritten atomically after every finished (dataset, method).

Protocol defaults (JAFAR's public evaluation config): images resized (shorter side, bilinear) and centre-cropped to
448, labels likewise with nearest; 20 epochs, AdamW lr 5e-4, batch size 2, random horizontal flips. As in AnyUp /
UPLiFT the cosine learning-rate schedule runs over the total number of steps (JAFAR's stepped a per-epoch schedule
every batch). Command line: ``python -m uplift_diffusion.features.probe --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..utils.images import load_image
from ..utils.io import atomic_write, write_text_atomic

IGNORE_INDEX = 255
METHODS = ("nearest", "bilinear", "uplift")
TASKS = ("seg", "depth")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


# ======================================================================== metrics
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[K, K] int64 counts, rows = ground-truth class, columns = predicted class; ``ignore_index`` pixels skipped."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    valid = target != ignore_index
    target, pred = target[valid].long(), pred[valid].long()
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}) or {ignore_index}, got values in "
                         f"[{target.min().item()}, {target.max().item()}]")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def segmentation_scores(confmat: torch.Tensor) -> dict:
    """mIoU (mean over classes present in the ground truth or the prediction), pixel accuracy and per-class IoU
    (``None`` for classes that never occur)."""
    confmat = confmat.double()
    intersection = confmat.diag()
    union = confmat.sum(0) + confmat.sum(1) - intersection
    present = union > 0
    iou = torch.where(present, intersection / union.clamp_min(1), torch.full_like(union, float("nan")))
    total = confmat.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_accuracy": float(intersection.sum() / total) if total > 0 else float("nan"),
        "iou_per_class": [None if math.isnan(v) else float(v) for v in iou.tolist()],
    }


def depth_scores(pred: torch.Tensor, target: torch.Tensor, min_depth: float, max_depth: float) -> dict:
    """δ1 (share of pixels with max(pred/gt, gt/pred) < 1.25) and RMSE over the valid pixels of one image."""
    valid = (target > min_depth) & (target < max_depth)
    if not valid.any():
        return {"delta1": float("nan"), "rmse": float("nan")}
    p, t = pred[valid].double().clamp_min(1e-6), target[valid].double()
    ratio = torch.maximum(p / t, t / p)
    return {"delta1": float((ratio < 1.25).double().mean()), "rmse": float(((p - t) ** 2).mean().sqrt())}


# ======================================================================== datasets
def _resize_crop(image: Image.Image, size: int, resample: int) -> Image.Image:
    """Shorter side to ``size`` then the central ``size``x``size`` crop."""
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new, resample=resample)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


class DenseLabelDataset(torch.utils.data.Dataset):
    """(image, dense target) pairs, resized and centre-cropped to ``size``.

    Args:
        pairs: ``(image_path, target_path)`` pairs.
        task: ``"seg"`` (targets: class-index PNGs, palette or greyscale) or ``"depth"`` (``.npy`` float depth, or
            16-bit PNG divided by ``depth_scale``).
        num_classes: classes of a segmentation dataset (0 for depth).
        size: side of the square images and targets.
        label_map: optional [256] lookup table from stored label values to class indices (255 = ignore).
        depth_scale: PNG depth units per metre (e.g. 1000 for millimetres).
        name: dataset name for results and messages.

    Items are ``(image [3, size, size] float in [0, 1], target [size, size] int64 class or float32 depth)``.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], task: str, num_classes: int, size: int = 448,
                 label_map: np.ndarray | None = None, depth_scale: float = 1000.0, name: str = "dataset"):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if not pairs:
            raise ValueError(f"{name}: no (image, label) pairs found")
        if task == "seg" and not 1 <= num_classes <= IGNORE_INDEX:
            raise ValueError(f"{name}: num_classes must be in [1, {IGNORE_INDEX}], got {num_classes}")
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.task, self.num_classes, self.size, self.name = task, num_classes, size, name
        self.label_map = None if label_map is None else np.asarray(label_map, dtype=np.uint8)
        self.depth_scale = depth_scale

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, limit: int | None) -> DenseLabelDataset:
        """The first ``limit`` pairs (all when ``None``)."""
        if limit is None or limit >= len(self.pairs):
            return self
        return DenseLabelDataset(self.pairs[:limit], self.task, self.num_classes, self.size, self.label_map,
                                 self.depth_scale, self.name)

    def _target(self, path: Path) -> Image.Image:
        if self.task == "depth":
            if path.suffix == ".npy":
                depth = np.load(path, allow_pickle=False).astype(np.float32)
            else:
                depth = np.asarray(Image.open(path), dtype=np.float32) / self.depth_scale
            if depth.ndim != 2:
                raise ValueError(f"depth map {path} must be 2-D, got shape {depth.shape}")
            return Image.fromarray(depth, mode="F")
        with Image.open(path) as label:
            if label.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(f"label {path} must be a palette or greyscale class-index image, got mode "
                                 f"{label.mode!r}")
            values = np.asarray(label)
        if values.max(initial=0) > 255:
            raise ValueError(f"label {path} has values above 255")
        values = values.astype(np.uint8)
        if self.label_map is not None:
            values = self.label_map[values]
        return Image.fromarray(values, mode="L")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, target_path = self.pairs[index]
        image = _resize_crop(load_image(image_path), self.size, Image.BILINEAR)
        target = _resize_crop(self._target(target_path), self.size, Image.NEAREST)
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0  # [3, S, S]
        array = np.asarray(target).copy()
        return pixels, torch.from_numpy(array.astype(np.int64 if self.task == "seg" else np.float32))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder {path} not found")
    return path


def _pairs_by_stem(image_dir: Path, label_dir: Path, label_suffixes: Sequence[str], strip: str = "",
                   label_suffix_name: str = "") -> list[tuple[Path, Path]]:
    pairs = []
    for image in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES):
        stem = image.stem.removesuffix(strip) if strip else image.stem
        rel = image.parent.relative_to(image_dir)
        for suffix in label_suffixes:
            label = label_dir / rel / f"{stem}{label_suffix_name}{suffix}"
            if label.is_file():
                pairs.append((image, label))
                break
    return pairs


def voc_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Pascal VOC 2012: ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/<split>.txt}``
    (``root`` may be ``VOCdevkit`` or ``VOC2012``)."""
    base = root / "VOC2012" if (root / "VOC2012").is_dir() else root
    ids_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not ids_file.is_file():
        raise FileNotFoundError(f"VOC: {ids_file} not found (root must be VOCdevkit or VOC2012)")
    ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    return [(base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png") for i in ids]


def ade20k_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """ADE20K (SceneParsing): ``ADEChallengeData2016/{images, annotations}/{training, validation}``."""
    folder = {"train": "training", "val": "validation"}.get(split, split)
    images = _require_dir(root / "images" / folder, "ADE20K")
    return _pairs_by_stem(images, _require_dir(root / "annotations" / folder, "ADE20K"), [".png"])


def cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` (label ids mapped to the 19 train ids, others ignored)."""
    images = _require_dir(root / "leftImg8bit" / split, "Cityscapes")
    labels = _require_dir(root / "gtFine" / split, "Cityscapes")
    return _pairs_by_stem(images, labels, [".png"], strip="_leftImg8bit", label_suffix_name="_gtFine_labelIds")


def coco_stuff_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """COCO-Stuff 164k: ``images/<split>2017/*.jpg`` and ``annotations/<split>2017/*.png`` (stuffthingmaps), under
    ``root`` or ``root/dataset``; when ``root/curated/<split>2017/Coco164kFull_Stuff_Coarse.txt`` exists (the
    curated list used by STEGO / JAFAR) only its images are used."""
    folder = f"{split}2017" if split in ("train", "val") else split
    base = root / "dataset" if (root / "dataset" / "images").is_dir() else root
    images = _require_dir(base / "images" / folder, "COCO-Stuff")
    labels = _require_dir(base / "annotations" / folder, "COCO-Stuff")
    curated = root / "curated" / folder / "Coco164kFull_Stuff_Coarse.txt"
    if curated.is_file():
        ids = [line.strip() for line in curated.read_text().splitlines() if line.strip()]
        return [(images / f"{i}.jpg", labels / f"{i}.png") for i in ids]
    return _pairs_by_stem(images, labels, [".png"])


def folder_pairs(root: Path, split: str, task: str) -> list[tuple[Path, Path]]:
    """Generic layout: ``root/<split>/images/*`` with ``root/<split>/labels/<stem>.png`` (segmentation) or
    ``root/<split>/depth/<stem>.npy|.png`` (depth)."""
    images = _require_dir(root / split / "images", "folder dataset")
    if task == "depth":
        return _pairs_by_stem(images, _require_dir(root / split / "depth", "folder dataset"), [".npy", ".png"])
    return _pairs_by_stem(images, _require_dir(root / split / "labels", "folder dataset"), [".png"])


def _lut(mapping: dict[int, int]) -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table


# Cityscapes labelIds of the 19 evaluated classes, in trainId order (road ... bicycle); every other id is ignored.
CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

# COCO-Stuff's 27 coarse classes (its super-categories; things 0-11, stuff 12-26) and the fine label values (0-181 in
# the stuffthingmaps PNGs, 255 = unlabeled) of each.
COCO_STUFF_COARSE: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("electronic", tuple(range(71, 77))), ("appliance", tuple(range(77, 83))), ("food-things", tuple(range(51, 61))),
    ("furniture-things", tuple(range(61, 71))), ("indoor", tuple(range(83, 91))), ("kitchen", tuple(range(43, 51))),
    ("accessory", tuple(range(25, 33))), ("animal", tuple(range(15, 25))), ("outdoor", tuple(range(9, 15))),
    ("person", (0,)), ("sports", tuple(range(33, 43))), ("vehicle", tuple(range(1, 9))),
    ("ceiling", (101, 102)), ("floor", (100, 113, 114, 115, 116, 117)), ("food-stuff", (120, 121, 152, 169)),
    ("furniture-stuff", (97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164)),
    ("raw-material", (99, 131, 138, 142)), ("textile", (91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167)),
    ("wall", tuple(range(170, 177))), ("window", (179, 180)), ("building", (94, 95, 127, 150, 157, 165)),
    ("ground", (110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158)),
    ("plant", (93, 96, 118, 123, 128, 133, 141, 162, 168)), ("sky", (105, 156)),
    ("solid", (126, 134, 149, 159, 161, 181)), ("structural", (98, 112, 137, 145, 163)),
    ("water", (119, 147, 154, 177, 178)),
)


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one standard dataset layout."""

    pairs: Callable[[Path, str], list]
    num_classes: int
    label_map: np.ndarray | None = None


SEGMENTATION_DATASETS: dict[str, DatasetSpec] = {
    "voc": DatasetSpec(voc_pairs, 21),  # 0 background + 20 classes, 255 = boundary (ignored)
    # JAFAR keeps ADE20K's value 0 ("other") as a class: 151 classes.
    "ade20k": DatasetSpec(ade20k_pairs, 151),
    "cityscapes": DatasetSpec(cityscapes_pairs, 19, _lut({src: i for i, src in enumerate(CITYSCAPES_EVAL_IDS)})),
    "coco-stuff": DatasetSpec(coco_stuff_pairs, 27, _lut({fine: coarse for coarse, (_, fines) in
                                                          enumerate(COCO_STUFF_COARSE) for fine in fines})),
}


def build_dataset(name: str, root: str | Path, split: str, task: str = "seg", size: int = 448,
                  num_classes: int | None = None, depth_scale: float = 1000.0) -> DenseLabelDataset:
    """A dataset from its standard folder layout: ``"voc"``, ``"ade20k"``, ``"cityscapes"``, ``"coco-stuff"``
    (segmentation) or ``"folder"`` (segmentation with ``num_classes``, or depth; see :func:`folder_pairs`)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} not found")
    if name == "folder":
        if task == "seg" and not num_classes:
            raise ValueError("the 'folder' segmentation dataset needs num_classes (--num-classes)")
        return DenseLabelDataset(folder_pairs(root, split, task), task, num_classes or 0, size,
                                 depth_scale=depth_scale, name=f"{root.name}-{split}")
    if name not in SEGMENTATION_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join([*SEGMENTATION_DATASETS, 'folder'])}")
    if task != "seg":
        raise ValueError(f"{name} is a segmentation dataset; depth probes use --dataset folder")
    spec = SEGMENTATION_DATASETS[name]
    pairs = spec.pairs(root, split)
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{name} {split}: {len(missing)} listed files are missing, e.g. {missing[0]}")
    return DenseLabelDataset(pairs, "seg", spec.num_classes, size, spec.label_map, name=name)


# ======================================================================== features and probes
def iterations_for(grid: int, size: int) -> int:
    """Fewest 2x steps that take a ``grid``-token side to at least ``size`` pixels."""
    return max(1, math.ceil(math.log2(size / grid)))


class DenseFeatures:
    """Pixel-dense features of a batch by one method: ``"uplift"``, ``"bilinear"`` or ``"nearest"``."""

    def __init__(self, extractor, method: str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
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
            raise ValueError(f"{state_path} was written with other settings or another dataset size; delete it or "
                             f"use another output folder")
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


# ======================================================================== the whole evaluation
def _read_results(path: Path) -> dict:
    if not path.is_file():
        return {"results": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); move it away to start over") from None


def markdown_table(results: dict) -> str:
    """A Table-1-style Markdown table: one row per method, (mIoU, Acc) or (δ1, RMSE) columns per dataset."""
    entries = results.get("results", {})
    datasets = list(dict.fromkeys(e["dataset"] for e in entries.values()))
    methods = [m for m in METHODS if any(e["method"] == m for e in entries.values())]
    methods += sorted({e["method"] for e in entries.values()} - set(methods))
    header = ["Method", "Params (M)", "Time (ms)"]
    for d in datasets:
        task = next(e["task"] for e in entries.values() if e["dataset"] == d)
        header += [f"{d} mIoU ↑", f"{d} Acc ↑"] if task == "seg" else [f"{d} δ1 ↑", f"{d} RMSE ↓"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in methods:
        rows = [e for e in entries.values() if e["method"] == m]
        times = [e["scores"]["ms_per_image"] for e in rows]
        row = [m, f"{rows[0]['num_parameters'] / 1e6:.2f}" if rows[0]["num_parameters"] else "-",
               f"{np.mean(times):.1f}"]
        for d in datasets:
            e = next((e for e in rows if e["dataset"] == d), None)
            if e is None:
                row += ["", ""]
            elif e["task"] == "seg":
                row += [f"{100 * e['scores']['miou']:.2f}", f"{100 * e['scores']['pixel_accuracy']:.2f}"]
            else:
                row += [f"{100 * e['scores']['delta1']:.2f}", f"{e['scores']['rmse']:.4f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class ProbeRun:
    """What :func:`run_probe_evaluation` produced."""

    results_path: Path
    table_path: Path
    results: dict = field(default_factory=dict)


def run_probe_evaluation(extractor, train_set: DenseLabelDataset, val_set: DenseLabelDataset, output_dir: str | Path,
                         methods: Sequence[str] = METHODS, config: ProbeConfig | None = None,
                         device: str | torch.device | None = None, backbone_name: str = "backbone",
                         max_steps: int | None = None) -> ProbeRun:
    """Train and evaluate one probe per method; resumable.

    Args:
        extractor: a :class:`~uplift_diffusion.features.UPLiFTFeatureExtractor` (backbone + UPLiFT), frozen.
        train_set / val_set: :class:`DenseLabelDataset` of the same task (images already ``size``x``size``).
        output_dir: gets ``results.json``, ``results.md``, ``probes/<dataset>_<method>.safetensors`` (finished
            probes) and ``probes/<dataset>_<method>.state.pt`` (training state, for resuming).
        methods: any of ``"uplift"``, ``"bilinear"``, ``"nearest"``.
        config: :class:`ProbeConfig` (its ``task`` must match the datasets).
        device: where to run (default: the extractor's device).
        backbone_name: recorded in the results.
        max_steps: stop after this many training steps in this call (for tests of resuming); results of unfinished
            methods are then missing.
    """
    from safetensors.torch import load_file, save_file

    config = config or ProbeConfig(task=train_set.task)
    if train_set.task != config.task or val_set.task != config.task:
        raise ValueError(f"config.task={config.task!r} but the datasets are {train_set.task!r} / {val_set.task!r}")
    if train_set.num_classes != val_set.num_classes:
        raise ValueError(f"train and val sets have {train_set.num_classes} and {val_set.num_classes} classes")
    device = torch.device(device) if device is not None else extractor.device
    extractor.to(device)
    output = Path(output_dir)
    (output / "probes").mkdir(parents=True, exist_ok=True)
    results_path, table_path = output / "results.json", output / "results.md"
    results = _read_results(results_path)
    for method in methods:
        key = f"{val_set.name}/{method}"
        if key in results["results"]:
            continue  # finished in an earlier run
        features = DenseFeatures(extractor, method)
        stem = output / "probes" / f"{val_set.name}_{method}"
        weights = stem.with_suffix(".safetensors")
        if weights.is_file():
            probe = _make_probe(config, extractor.feature_dim, train_set.num_classes).to(device)
            probe.load_state_dict(load_file(str(weights), device=str(device)))
        else:
            probe = train_probe(features, train_set, config, stem.with_suffix(".state.pt"), device, max_steps,
                                desc=f"{val_set.name}/{method} probe")
            if probe is None:
                continue
            state = {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items()}
            atomic_write(weights, lambda tmp, s=state: save_file(s, tmp))
        scores = evaluate_probe(features, probe, val_set, config, device, desc=f"{val_set.name}/{method} eval")
        results["results"][key] = {
            "dataset": val_set.name, "method": method, "task": config.task, "backbone": backbone_name,
            "num_parameters": features.num_parameters, "num_train": len(train_set), "num_val": len(val_set),
            "size": val_set.size, "config": asdict(config), "scores": scores,
        }
        write_text_atomic(results_path, json.dumps(results, indent=2) + "\n")
        write_text_atomic(table_path, markdown_table(results))
    return ProbeRun(results_path, table_path, results)


# ======================================================================== command line
def build_parser() -> argparse.ArgumentParser:
    defaults = ProbeConfig()
    p = argparse.ArgumentParser(prog="python -m uplift_diffusion.features.probe",
                                description="Linear-probe evaluation of pixel-dense DINO features (JAFAR protocol).")
    p.add_argument("--dataset", required=True, choices=[*SEGMENTATION_DATASETS, "folder"])
    p.add_argument("--root", required=True, help="dataset root in its standard layout")
    p.add_argument("--task", default="seg", choices=TASKS, help="seg (default) or depth (--dataset folder)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--num-classes", type=int, default=None, help="classes of a 'folder' segmentation dataset")
    p.add_argument("--depth-scale", type=float, default=1000.0, help="PNG depth units per metre (default 1000)")
    p.add_argument("-o", "--output", required=True, help="output folder (results.json, results.md, probes/)")
    p.add_argument("--backbone", default="dinov2-s14", help="dinov2-s14 (default) or dinov3-splus16")
    p.add_argument("--backbone-weights", default=None, help="local backbone weights (timm model.safetensors)")
    p.add_argument("--upsampler", default=None, help="local UPLiFT checkpoint (default: the published one)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--size", type=int, default=448, help="image and feature side (default 448)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--max-val", type=int, default=None, help="use only the first N validation images")
    p.add_argument("--min-depth", type=float, default=defaults.min_depth)
    p.add_argument("--max-depth", type=float, default=defaults.max_depth)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .extractor import UPLiFTFeatureExtractor

    args = build_parser().parse_args(argv)
    try:
        kwargs = dict(task=args.task, size=args.size, num_classes=args.num_classes, depth_scale=args.depth_scale)
        train_set = build_dataset(args.dataset, args.root, args.train_split, **kwargs).subset(args.max_train)
        val_set = build_dataset(args.dataset, args.root, args.val_split, **kwargs).subset(args.max_val)
        config = ProbeConfig(task=args.task, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, num_workers=args.num_workers, min_depth=args.min_depth,
                             max_depth=args.max_depth)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        extractor = UPLiFTFeatureExtractor.from_pretrained(args.backbone, backbone=args.backbone_weights,
                                                           upsampler=args.upsampler, device=device)
        run = run_probe_evaluation(extractor, train_set, val_set, args.output, args.methods, config, device,
                                   backbone_name=args.backbone)
    except (ValueError, TypeError, OSError) as err:
        print(f"probe: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(run.table_path.read_text(), end="")
    print(f"results: {run.results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
