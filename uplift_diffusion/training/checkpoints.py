"""Atomic, verified training checkpoints.

A checkpoint is a folder ``checkpoint-<step>`` holding ``model.safetensors`` (weights), ``training_state.pt``
(optimizer, scheduler, RNG states, data position; read back with ``weights_only=True``) and ``manifest.json`` (size
and sha256 of both files, written last). The folder is assembled under a temporary name and renamed into place,
so a crash never leaves a half-written ``checkpoint-<step>``; old checkpoints are pruned only after a new one is
complete. Loading verifies the manifest and refuses a corrupt or truncated checkpoint with :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..utils.errors import CheckpointError
from ..utils.fingerprint import file_sha256
from ..utils.io import atomic_write

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
MANIFEST_FILE = "manifest.json"
PREFIX = "checkpoint-"



def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG the training loop can touch: Python, NumPy, torch CPU / CUDA and the trainer's generator."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


class CheckpointManager:
    """Writes, verifies, lists and prunes the checkpoints of one run.

    Args:
        folder: where the ``checkpoint-<step>`` folders live.
        keep_last: how many complete checkpoints to keep.
    """

    def __init__(self, folder: str | os.PathLike, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.skipped: list[str] = []  # why load_latest passed over checkpoints

    def path_for(self, step: int) -> Path:
        return self.folder / f"{PREFIX}{step:08d}"

    def list(self) -> list[Path]:
        """Checkpoint folders (complete or not), oldest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)
                 and p.name[len(PREFIX):].isdigit()]
        return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))

    def save(self, step: int, model_state: dict[str, torch.Tensor], training_state: dict[str, Any]) -> Path:
        """Write checkpoint ``step`` atomically, then prune beyond ``keep_last``; returns its folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path_for(step)
        tmp = self.folder / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        atomic_write(tmp / MODEL_FILE, lambda file: save_file(tensors, file))  # safetensors alone writes mode 0600
        torch.save({**training_state, "step": step}, tmp / STATE_FILE)
        manifest = {"format": 1, "step": step,
                    "files": {n: {"size": (tmp / n).stat().st_size, "sha256": file_sha256(tmp / n)}
                              for n in (MODEL_FILE, STATE_FILE)}}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
        if final.exists():  # re-saving the same step (e.g. a resumed run that stops where it started)
            shutil.rmtree(final)
        os.replace(tmp, final)
        self.prune()
        return final

    def prune(self) -> None:
        complete = [p for p in self.list() if (p / MANIFEST_FILE).is_file()]
        for old in complete[: max(0, len(complete) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def verify(path: str | os.PathLike) -> dict:
        """Check a checkpoint against its manifest; returns the manifest or raises :class:`CheckpointError`."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text())
            files = manifest["files"]
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path} is incomplete: it has no {MANIFEST_FILE} (the write was "
                                  f"interrupted)") from None
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"checkpoint {path} has an unreadable {MANIFEST_FILE} ({err})") from None
        for name in (MODEL_FILE, STATE_FILE):
            file, expected = path / name, files.get(name, {})
            if not file.is_file():
                raise CheckpointError(f"checkpoint {path} is missing {name}")
            size = file.stat().st_size
            if size != expected.get("size"):
                raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {name} has {size} bytes, the "
                                      f"manifest says {expected.get('size')}")
            if file_sha256(file) != expected.get("sha256"):
                raise CheckpointError(f"checkpoint {path} is corrupt: the sha256 of {name} does not match its "
                                      f"manifest")
        return manifest

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(model_state, training_state)`` of a verified checkpoint; :class:`CheckpointError` if it is bad."""
        path = Path(path)
        cls.verify(path)
        try:
            model_state = load_file(str(path / MODEL_FILE))
            training_state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"checkpoint {path} could not be read ({type(err).__name__}: {err})") from None
        return model_state, training_state

    def load_latest(self) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
        """The newest checkpoint that verifies. Bad ones are skipped with a warning naming the problem (and left on
        disk for inspection); ``None`` when there is no usable checkpoint."""
        for path in reversed(self.list()):
            try:
                model_state, training_state = self.load(path)
            except CheckpointError as err:
                self.skipped.append(str(err))
                logger.warning("%s; falling back to the previous checkpoint", err)
                continue
            return path, model_state, training_state
        return None
