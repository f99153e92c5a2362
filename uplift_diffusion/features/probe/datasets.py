"""Linear-probe datasets: (image, dense target) pairs in the standard layouts of Pascal VOC, ADE20K, Cityscapes,
COCO-Stuff and a generic folder layout (segmentation or depth), resized and centre-cropped to a square."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...utils.errors import InputError, InputNotFoundError
from ...utils.image_ops import pil_to_tensor
from ...utils.images import IMAGE_SUFFIXES, load_image

IGNORE_INDEX = 255
TASKS = ("seg", "depth")


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
            raise InputError(f"task must be one of {TASKS}, got {task!r}")
        if not pairs:
            raise InputError(f"{name}: no (image, label) pairs found")
        if task == "seg" and not 1 <= num_classes <= IGNORE_INDEX:
            raise InputError(f"{name}: num_classes must be in [1, {IGNORE_INDEX}], got {num_classes}")
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
                raise InputError(f"depth map {path} must be 2-D, got shape {depth.shape}")
            return Image.fromarray(depth, mode="F")
        with Image.open(path) as label:
            if label.mode not in ("P", "L", "I", "I;16"):
                raise InputError(f"label {path} must be a palette or greyscale class-index image, got mode "
                                 f"{label.mode!r}")
            values = np.asarray(label)
        if values.max(initial=0) > 255:
            raise InputError(f"label {path} has values above 255")
        values = values.astype(np.uint8)
        if self.label_map is not None:
            values = self.label_map[values]
        wrong = np.unique(values[(values >= self.num_classes) & (values != IGNORE_INDEX)])
        if wrong.size:
            raise InputError(f"label {path} holds class value(s) {', '.join(map(str, wrong[:5].tolist()))} but "
                             f"there are {self.num_classes} classes (0-{self.num_classes - 1}, {IGNORE_INDEX} = "
                             f"ignore); pass the right --num-classes or fix the label")
        return Image.fromarray(values, mode="L")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, target_path = self.pairs[index]
        image, target = load_image(image_path), self._target(target_path)
        if image.size != target.size:  # resized separately, a label of another size would be silently misaligned
            raise InputError(f"label {target_path} is {target.width}x{target.height} but its image {image_path} is "
                             f"{image.width}x{image.height}; labels must have their image's size")
        image = _resize_crop(image, self.size, Image.BILINEAR)
        target = _resize_crop(target, self.size, Image.NEAREST)
        pixels = pil_to_tensor(image)  # [3, S, S]
        array = np.asarray(target).copy()
        return pixels, torch.from_numpy(array.astype(np.int64 if self.task == "seg" else np.float32))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputNotFoundError(f"{what}: folder {path} not found")
    return path


def _pairs_by_stem(image_dir: Path, label_dir: Path, label_suffixes: Sequence[str], strip: str = "",
                   label_suffix_name: str = "") -> list[tuple[Path, Path]]:
    pairs = []
    for image in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
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
        raise InputNotFoundError(f"VOC: {ids_file} not found (root must be VOCdevkit or VOC2012)")
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
        raise InputNotFoundError(f"dataset root {root} not found")
    if name == "folder":
        if task == "seg" and not num_classes:
            raise InputError("the 'folder' segmentation dataset needs num_classes (--num-classes)")
        return DenseLabelDataset(folder_pairs(root, split, task), task, num_classes or 0, size,
                                 depth_scale=depth_scale, name=f"{root.name}-{split}")
    if name not in SEGMENTATION_DATASETS:
        raise InputError(f"unknown dataset {name!r}; available: {', '.join([*SEGMENTATION_DATASETS, 'folder'])}")
    if task != "seg":
        raise InputError(f"{name} is a segmentation dataset; depth probes use --dataset folder")
    spec = SEGMENTATION_DATASETS[name]
    pairs = spec.pairs(root, split)
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise InputNotFoundError(f"{name} {split}: {len(missing)} listed files are missing, e.g. {missing[0]}")
    return DenseLabelDataset(pairs, "seg", spec.num_classes, size, spec.label_map, name=name)
