"""Training images: image folders (recursive), Hugging Face ``datasets``, WebDataset shards; fixed random crops.

A training item is a *view*: one random square crop of one image, fixed by (seed, image key, view index), returned
as an image pyramid ``[I, I/2, I/4, ...]`` (antialiased bilinear). Because a view never changes, the backbone
features of each level can be cached across epochs (:mod:`uplift_diffusion.training.cache`).
"""

from __future__ import annotations

import glob
import hashlib
import io
import random
import tarfile
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..utils.errors import InputError, InputNotFoundError
from ..utils.image_ops import bilinear_resize, float_to_uint8, pil_to_tensor
from ..utils.images import IMAGE_SUFFIXES, load_image
from ..utils.io import require_path
from .config import DOWNSCALE_KERNELS, DataConfig, DataSource


def list_image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursive), sorted by path."""
    folder = require_path(folder, "folder", "image folder", f"image folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class FolderSource:
    """Images found recursively in a folder; keys are the paths relative to the folder."""

    def __init__(self, folder: str | Path):
        self.root = Path(folder)
        self.files = list_image_files(folder)

    def __len__(self) -> int:
        return len(self.files)

    def key(self, i: int) -> str:
        return f"{self.root.name}/{self.files[i].relative_to(self.root).as_posix()}"

    def load(self, i: int) -> Image.Image:
        return load_image(self.files[i])

    def open_header(self, i: int) -> Image.Image:
        return Image.open(self.files[i])


class HFSource:
    """A Hugging Face ``datasets`` dataset: a folder written by ``save_to_disk`` or a name for ``load_dataset``."""

    def __init__(self, path: str, split: str = "train", image_column: str = "image"):
        import datasets

        folder = Path(path)
        if folder.is_dir() and any((folder / f).exists() for f in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(path, split=split)
        if image_column not in ds.column_names:
            raise InputError(f"dataset {path!r} has no column {image_column!r}; columns: {ds.column_names}")
        self.dataset, self.column, self.name = ds, image_column, Path(path).name

    def __len__(self) -> int:
        return len(self.dataset)

    def key(self, i: int) -> str:
        return f"{self.name}/{i}"

    def load(self, i: int) -> Image.Image:
        value = self.dataset[i][self.column]
        if isinstance(value, dict) and value.get("bytes") is not None:
            value = value["bytes"]
        if not isinstance(value, (Image.Image, bytes)):
            raise TypeError(f"column {self.column!r} of item {i} is {type(value).__name__}, expected an image")
        return load_image(value, name=f"{self.name}[{i}]")

    def open_header(self, i: int) -> Image.Image:
        value = self.dataset[i][self.column]  # datasets' Image feature opens the file lazily (header only)
        if isinstance(value, dict) and value.get("bytes") is not None:
            value = value["bytes"]
        if isinstance(value, bytes):
            return Image.open(io.BytesIO(value))
        if not isinstance(value, Image.Image):
            raise TypeError(f"column {self.column!r} holds {type(value).__name__}, not an image")
        return value


class WebDatasetSource:
    """WebDataset ``.tar`` shards, indexed once for random access (one image per sample key).

    The sample key is the member path up to the first dot of its file name (WebDataset's convention); the first
    image extension found for a key is used.
    """

    def __init__(self, pattern: str):
        path = Path(pattern)
        shards = sorted(glob.glob(str(path / "*.tar"))) if path.is_dir() else sorted(glob.glob(pattern))
        if not shards:
            raise InputNotFoundError(f"no WebDataset shards (.tar) match {pattern!r}")
        self.entries: list[tuple[str, str, str]] = []  # (shard, member, key)
        for shard in shards:
            seen = set()
            with tarfile.open(shard) as tar:
                for member in tar.getmembers():
                    name = Path(member.name)
                    key = (name.parent / name.name.split(".", 1)[0]).as_posix()
                    if member.isfile() and name.suffix.lower() in IMAGE_SUFFIXES and key not in seen:
                        seen.add(key)
                        self.entries.append((shard, member.name, f"{Path(shard).stem}/{key}"))
        self._open: dict[str, tarfile.TarFile] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, i: int) -> str:
        return self.entries[i][2]

    def load(self, i: int) -> Image.Image:
        shard, member, _ = self.entries[i]
        if shard not in self._open:
            self._open[shard] = tarfile.open(shard)
        data = self._open[shard].extractfile(member).read()
        return load_image(data, name=f"{shard}:{member}")

    def open_header(self, i: int) -> Image.Image:
        shard, member, _ = self.entries[i]
        if shard not in self._open:
            self._open[shard] = tarfile.open(shard)
        return Image.open(self._open[shard].extractfile(member))  # reads the member's header, not all of it

    def __getstate__(self):  # DataLoader workers open their own file handles
        return {**self.__dict__, "_open": {}}


def check_images(sources: Sequence, progress_from: int = 2000) -> dict[str, tuple[int, int]]:
    """Open the header of every image of ``sources`` (objects with ``__len__``, ``key(i)`` and ``open_header(i)``), so
    that a file that is not an image stops the run before its first step, not in the middle (the refusal lists every
    bad file: fix them all at once). Headers only: a photo whose data is cut short further on still fails when read.

    Returns:
        each image's key -> its (width, height).

    Raises:
        InputError: naming the unreadable images (up to 10, and how many in all) and why.
    """
    bad, sizes = [], {}
    total = sum(len(s) for s in sources)
    with tqdm(total=total, desc="checking training images", disable=total < progress_from, leave=False) as bar:
        for source in sources:
            for i in range(len(source)):
                try:
                    with source.open_header(i) as image:
                        if min(image.size) < 1:
                            raise ValueError(f"size {image.size}")
                        sizes[source.key(i)] = image.size
                except Exception as err:  # noqa: BLE001  (any reason makes the file unusable; reported below)
                    reason = " ".join(str(err).split())[:80] or type(err).__name__
                    bad.append(f"{source.key(i)} ({reason})")
                bar.update(1)
    if bad:
        shown = ", ".join(bad[:10]) + (f", ... ({len(bad)} in all)" if len(bad) > 10 else "")
        raise InputError(f"{len(bad)} training image(s) cannot be read (corrupt, truncated or not an image): {shown}; "
                         f"remove or replace them")
    return sizes


def check_crop_size(sizes: dict[str, tuple[int, int]], crop_size: int, predownscale: float = 1.0) -> None:
    """Crops larger than a photo's short side (after ``predownscale``) are enlarged to ``crop_size``: the targets the
    model learns to produce are then blurred enlargements, not photos, and a step costs the memory of ``crop_size``
    for nothing. Enlarging a few photos a little is a recipe's choice (ImageNet at 448 px: most photos are 375 px
    high), said in one warning; a ``crop_size`` over twice the short side of most photos is a mistake, refused.

    Raises:
        InputError: naming ``data.crop_size``, the photos' sizes and the largest crop size they allow.
    """
    import statistics
    import warnings

    short = {key: max(1, round(min(size) * predownscale)) for key, size in sizes.items()}
    small = sorted((side, key) for key, side in short.items() if side < crop_size)
    if not small:
        return
    shown = ", ".join(f"{key} ({'x'.join(map(str, sizes[key]))})" for _, key in small[:3])
    after = " after data.predownscale" if predownscale != 1 else ""
    photos = (f"{len(small)} of {len(sizes)} training photo(s) have a short side{after} below data.crop_size "
              f"{crop_size} ({shown}{', ...' if len(small) > 3 else ''})")
    median = statistics.median_low(list(short.values()))
    if crop_size > 2 * median:
        raise InputError(f"{photos}, the median photo {median} px: their crops would be enlarged "
                         f"{crop_size / median:.1f}x (blurred targets, and memory for nothing); set data.crop_size to "
                         f"at most {median} or use larger photos")
    warnings.warn(f"{photos}: their crops are enlarged to {crop_size} px (targets without the detail of a photo of "
                  f"that size)", stacklevel=2)


def build_source(source: DataSource):
    if source.type == "folder":
        return FolderSource(source.path)
    if source.type == "hf":
        return HFSource(source.path, source.split, source.image_column)
    if source.type == "webdataset":
        return WebDatasetSource(source.path)
    raise InputError(f"unknown data source type {source.type!r}")


def view_rng(seed: int, key: str, view: int) -> random.Random:
    """A random generator fixed by (seed, key, view), identical in every process and run."""
    digest = hashlib.sha256(f"{seed}|{key}|{view}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


RESIZE_KERNELS = tuple(k for k in DOWNSCALE_KERNELS if k != "bicubic-jpeg")


def downscale(image: torch.Tensor, size: tuple[int, int], kernel: str = "bilinear") -> torch.Tensor:
    """Resize of a [B, 3, H, W] image: antialiased ``"bilinear"`` or ``"bicubic"`` (PIL-like, clamped to [0, 1]), or
    ``"bilinear-aliased"`` (``F.interpolate`` without antialiasing: the paper's FacesHQ protocol, B.2, and what a
    plain ``interpolate`` call or a camera's line skipping gives). ``"bicubic-jpeg"`` is a degradation of the
    training pyramid (:func:`image_pyramid`), not a resize kernel."""
    if kernel not in RESIZE_KERNELS:
        raise InputError(f"downscale kernel must be one of {RESIZE_KERNELS}, got {kernel!r}")
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if kernel == "bilinear":
        return bilinear_resize(image, size)
    if kernel == "bilinear-aliased":
        return torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False,
                                               antialias=False)
    return torch.nn.functional.interpolate(image, size=size, mode="bicubic", align_corners=False,
                                           antialias=True).clamp(0, 1)  # bicubic


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """A [B, 3, H, W] image in [0, 1] saved as an 8-bit JPEG of ``quality`` (4:2:0, as cameras and the web store
    photos) and read back."""
    out = []
    for x in image:
        buffer = io.BytesIO()
        Image.fromarray(float_to_uint8(x[None])[0]).save(buffer, format="JPEG", quality=int(quality))
        out.append(pil_to_tensor(Image.open(buffer)))
    return torch.stack(out)


def image_pyramid(image: torch.Tensor, levels: int, kernel: str = "bilinear",
                  jpeg_quality: int = 75) -> list[torch.Tensor]:
    """``[I, I/2, ..., I/2**levels]`` of a [B, 3, H, W] or [3, H, W] image, each level downscaled from ``I`` with
    ``kernel`` (see :func:`downscale`); ``"bicubic-jpeg"``: bicubic, then every level below ``I`` JPEG-compressed at
    ``jpeg_quality``."""
    batched = image.ndim == 4
    x = image if batched else image[None]
    h, w = x.shape[-2:]
    resize = "bicubic" if kernel == "bicubic-jpeg" else kernel
    out = [downscale(x, (h >> j, w >> j), resize) for j in range(levels + 1)]
    if kernel == "bicubic-jpeg":
        out = out[:1] + [jpeg_roundtrip(level, jpeg_quality) for level in out[1:]]
    return out if batched else [o[0] for o in out]


class ViewDataset(torch.utils.data.Dataset):
    """``views_per_image`` fixed random square crops per image, each returned as an image pyramid.

    Item ``i`` is view ``i % views_per_image`` of image ``i // views_per_image``:
    ``{"key": "<image key>#v<view>", "images": [I (crop_size²), I/2, ..., I/2**levels]}``, RGB in [0, 1].

    Args:
        sources: objects with ``__len__``, ``key(i)`` and ``load(i) -> PIL.Image``.
        crop_size: side of the crop after resizing.
        levels: pyramid levels below the full crop (``max(depths)``).
        views_per_image: crops per image.
        min_crop_fraction: smallest crop side as a fraction of the image's short side.
        hflip: mirror half of the views.
        seed: seed of the crops.
        kernels: downscale kernels of the pyramid; each view draws one (fixed per view).
        predownscale: shrink each image by this factor before cropping (``Image.reduce`` for 1/integer factors,
            antialiased resize otherwise).
    """

    def __init__(self, sources: Sequence, crop_size: int, levels: int, views_per_image: int = 1,
                 min_crop_fraction: float = 1.0, hflip: bool = False, seed: int = 0,
                 kernels: Sequence[str] = ("bilinear",), predownscale: float = 1.0):
        if crop_size % (1 << levels):
            raise InputError(f"crop_size {crop_size} must be divisible by 2**{levels} (the deepest training depth)")
        self.index = [(s, i) for s in sources for i in range(len(s))]
        if not self.index:
            raise InputError("no training images found in the configured data sources")
        self.crop_size, self.levels, self.views = crop_size, levels, views_per_image
        self.min_crop_fraction, self.hflip, self.seed = min_crop_fraction, hflip, seed
        self.kernels = list(kernels)
        self.predownscale = predownscale

    @classmethod
    def from_config(cls, config: DataConfig, levels: int, seed: int) -> ViewDataset:
        if not config.sources:
            raise InputError("data.sources is empty: add at least one image folder, dataset or shard pattern")
        sources = [build_source(s) for s in config.sources]
        check_crop_size(check_images(sources), config.crop_size, config.predownscale)
        return cls(sources, config.crop_size, levels, config.views_per_image,
                   config.min_crop_fraction, config.hflip, seed, config.downscale, config.predownscale)

    def __len__(self) -> int:
        return len(self.index) * self.views

    def key(self, item: int) -> str:
        source, i = self.index[item // self.views]
        return f"{source.key(i)}#v{item % self.views}"

    def kernel(self, key: str, view: int) -> str:
        """The downscale kernel of this view (drawn after the crop, so single-kernel crops never change)."""
        if len(self.kernels) == 1:
            return self.kernels[0]
        rng = view_rng(self.seed, f"{key}|kernel", view)
        return self.kernels[rng.randrange(len(self.kernels))]

    def shrink(self, image: Image.Image) -> Image.Image:
        """The image reduced by ``predownscale`` (unchanged at 1)."""
        if self.predownscale == 1:
            return image
        factor = 1 / self.predownscale
        if abs(factor - round(factor)) < 1e-6:
            return image.reduce(round(factor))
        w, h = image.size
        return image.resize((max(1, round(w * self.predownscale)), max(1, round(h * self.predownscale))),
                            Image.Resampling.LANCZOS)

    def crop(self, image: Image.Image, key: str, view: int) -> torch.Tensor:
        """The fixed random square crop of this view, resized to ``crop_size``: [3, S, S]."""
        image = self.shrink(image)
        rng = view_rng(self.seed, key, view)
        w, h = image.size
        short = min(w, h)
        side = max(1, round(short * rng.uniform(self.min_crop_fraction, 1.0)))
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
        flip = self.hflip and rng.random() < 0.5
        x = pil_to_tensor(image.crop((left, top, left + side, top + side)))  # [3, side, side]
        x = bilinear_resize(x[None], (self.crop_size, self.crop_size))[0].clamp(0, 1)
        return x.flip(-1) if flip else x

    def __getitem__(self, item: int) -> dict:
        source, i = self.index[item // self.views]
        view = item % self.views
        crop = self.crop(source.load(i), source.key(i), view)
        kernel = self.kernel(source.key(i), view)
        quality = view_rng(self.seed, f"{source.key(i)}|jpeg", view).randint(60, 90)
        return {"key": f"{source.key(i)}#v{view}", "images": image_pyramid(crop, self.levels, kernel, quality)}


def collate_views(items: list[dict]) -> dict:
    """Stack a list of :class:`ViewDataset` items: ``{"keys": [...], "images": [[B, 3, S/2**j, S/2**j], ...]}``."""
    levels = len(items[0]["images"])
    return {"keys": [it["key"] for it in items],
            "images": [torch.stack([it["images"][j] for it in items]) for j in range(levels)]}


def epoch_batches(num_items: int, batch_size: int, epoch: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """This process's batches of one epoch: a seeded permutation cut into global batches of
    ``batch_size * world_size`` (the incomplete last one dropped), each split by rank."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator).tolist()
    global_batch = batch_size * world_size
    if num_items < global_batch:
        raise InputError(f"{num_items} training views are fewer than one global batch ({global_batch}); lower "
                         f"batch_size or add images / views_per_image")
    batches = [order[b:b + global_batch] for b in range(0, num_items - global_batch + 1, global_batch)]
    return [b[rank * batch_size:(rank + 1) * batch_size] for b in batches]
