"""Feature cache: backbone features of each (image view, scale) in safetensors shards, so the backbone runs once.

Entries are keyed ``"<view key>@<height>x<width>"``. A cache folder belongs to one *fingerprint* (backbone weights +
crop settings), stored in every shard's metadata; shards with another fingerprint are ignored, so that changing
the backbone or the crops can never serve stale features. Shards are written atomically (temp file + rename).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)


def cache_key(view_key: str, size: Sequence[int]) -> str:
    return f"{view_key}@{int(size[0])}x{int(size[1])}"


class FeatureCache:
    """Features on disk (safetensors shards) plus the entries not yet flushed.

    Args:
        folder: cache folder (created if missing).
        fingerprint: identifies what produced the features; shards with another fingerprint are ignored.
        shard_size: pending entries that trigger writing a shard.
        prefix: shard file-name prefix (one per process in multi-process runs, e.g. ``"r0"``).
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: str, shard_size: int = 512, prefix: str = "r0"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fingerprint, self.shard_size, self.prefix = fingerprint, shard_size, prefix
        self.pending: dict[str, torch.Tensor] = {}
        self.index: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        self.hits = self.misses = 0
        for shard in sorted(self.folder.glob("*.safetensors")):
            try:
                with safe_open(str(shard), framework="pt") as f:
                    if (f.metadata() or {}).get("fingerprint") != fingerprint:
                        continue
                    for key in f.keys():
                        self.index[key] = shard
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
        tmp = path.with_suffix(".tmp")
        save_file(self.pending, str(tmp), metadata={"fingerprint": self.fingerprint})
        os.replace(tmp, path)
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
