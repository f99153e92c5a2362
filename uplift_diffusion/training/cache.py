"""Feature cache: backbone features of each (image view, scale) in safetensors shards, so the backbone runs once.

Entries are keyed ``"<view key>@<height>x<width>"``. A cache folder belongs to one *fingerprint*
(:func:`cache_fingerprint`: backbone weights hash and dtype, data sources and their files' sizes / dates, crop and
pyramid settings, seed, image-reading policy), recorded in ``fingerprint.json`` and in every shard's metadata. Opening
a cache folder made with another fingerprint is refused with the list of what differs (``overwrite=True`` deletes its
shards instead), and shards with another fingerprint are never read, so changed settings can never serve stale
features. Shards are written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..utils.fingerprint import FINGERPRINT_FILE, canonical, check_fingerprint, read_fingerprint, write_fingerprint
from ..utils.io import atomic_write

logger = logging.getLogger(__name__)


IMAGE_POLICY = "uplift_diffusion.utils.images.load_image v1"  # bump when the image-reading policy changes pixels
_NOT_FEATURE_SETTINGS = ("num_workers", "cache_dir")


def _source_signature(source) -> str:
    """What a data source holds: its files' names and contents (datasets: their fingerprint). Contents, not
    modification times, so that a copy of the same photos (another machine, a fresh checkout) keeps the cache valid."""
    if hasattr(source, "files"):
        files = [Path(f) for f in source.files]
    elif hasattr(source, "entries"):
        files = sorted({Path(shard) for shard, _, _ in source.entries})
    else:
        return str(getattr(getattr(source, "dataset", None), "_fingerprint", type(source).__name__))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}|{f.stat().st_size}|".encode())
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def cache_fingerprint(backbone, config, levels: int, sources: Sequence = ()) -> dict:
    """Everything that determines the cached features of a training run (see the module docstring)."""
    data = {k: v for k, v in dataclasses.asdict(config.data).items() if k not in _NOT_FEATURE_SETTINGS}
    unique = list({id(s): s for s in sources}.values())
    return {"backbone": backbone.fingerprint, "backbone_dtype": config.backbone.dtype, "data": data,
            "source_files": [_source_signature(s) for s in unique], "seed": config.seed, "levels": levels,
            "image_reader": IMAGE_POLICY}


def cache_key(view_key: str, size: Sequence[int]) -> str:
    return f"{view_key}@{int(size[0])}x{int(size[1])}"


class FeatureCache:
    """Features on disk (safetensors shards) plus the entries not yet flushed.

    Args:
        folder: cache folder (created if missing).
        fingerprint: what produces the features (:func:`cache_fingerprint`, or any JSON-able value).
        shard_size: pending entries that trigger writing a shard.
        prefix: shard file-name prefix (one per process in multi-process runs, e.g. ``"r0"``).
        overwrite: delete the shards of a folder made with another fingerprint instead of refusing it.
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: dict | str, shard_size: int = 512, prefix: str = "r0",
                 overwrite: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        record, saved = self.folder / FINGERPRINT_FILE, read_fingerprint(self.folder / FINGERPRINT_FILE)
        if saved is not None and saved != canonical(fingerprint):
            if not overwrite:
                check_fingerprint(saved, fingerprint, f"feature cache {self.folder}",
                                  "point data.cache_dir at a new folder, delete this one, or pass --overwrite")
            for shard in self.folder.glob("*.safetensors"):
                shard.unlink()
        if saved != canonical(fingerprint):
            write_fingerprint(record, fingerprint)
        fingerprint = hashlib.sha256(json.dumps(canonical(fingerprint), sort_keys=True).encode()).hexdigest()[:32]
        self.fingerprint, self.shard_size, self.prefix = fingerprint, shard_size, prefix
        self.pending: dict[str, torch.Tensor] = {}
        self.index: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        self.hits = self.misses = 0
        self._seen: set[Path] = set()
        self.refresh()

    def refresh(self) -> None:
        """Index the shards written since the last look (by other processes of a multi-process run, say)."""
        # names starting with "." are shards being written (atomic_write's temporary files)
        shards = {p for p in self.folder.glob("*.safetensors") if not p.name.startswith(".")}
        for shard in sorted(shards - self._seen):
            self._seen.add(shard)
            try:
                with safe_open(str(shard), framework="pt") as f:
                    if (f.metadata() or {}).get("fingerprint") != self.fingerprint:
                        continue
                    for key in f.keys():
                        self.index.setdefault(key, shard)
            except Exception as err:  # a truncated shard from a crash: skip it, its features are recomputed
                logger.warning("feature cache: ignoring unreadable shard %s (%s)", shard, err)

    def __len__(self) -> int:
        return len(self.index) + len(self.pending)

    def __contains__(self, key: str) -> bool:
        return key in self.pending or key in self.index

    def get(self, key: str) -> torch.Tensor | None:
        if key in self.pending:
            return self.pending[key]
        shard = self.index.get(key)
        if shard is None:
            return None
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(shard), framework="pt")
        return self._handles[shard].get_tensor(key)

    def put(self, key: str, features: torch.Tensor) -> None:
        self.pending[key] = features.detach().to("cpu", torch.float32).contiguous()
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending entries as one new shard (atomically)."""
        if not self.pending:
            return
        n = len(list(self.folder.glob(f"{self.prefix}-*.safetensors")))
        while (path := self.folder / f"{self.prefix}-{n:06d}.safetensors").exists():
            n += 1
        pending, metadata = self.pending, {"fingerprint": self.fingerprint}
        atomic_write(path, lambda tmp: save_file(pending, tmp, metadata=metadata))
        self._seen.add(path)
        for key in self.pending:
            self.index[key] = path
        self.pending = {}

    def features(self, view_keys: Sequence[str], images: torch.Tensor,
                 encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Features of a batch of views at one scale: cached ones are read, the rest computed by ``encode`` (in one
        batch) and stored.

        Args:
            view_keys: one key per batch item.
            images: [B, 3, H, W] images of those views at this scale (on the backbone's device).
            encode: the backbone, [B, 3, H, W] -> [B, C, h, w].

        Returns:
            [B, C, h, w] features on ``images.device``.
        """
        keys = [cache_key(k, images.shape[-2:]) for k in view_keys]
        found = [self.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = encode(images[missing]).float()
            for i, feats in zip(missing, computed, strict=True):
                self.put(keys[i], feats)
                found[i] = feats
        return torch.stack([f.to(images.device) for f in found])
