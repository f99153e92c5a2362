"""A training run's folder: what belongs to the run, what may be replaced, and what a resumed run may change.

A run marks its ``output_dir`` with ``run.json`` (written first, before any other file) listing the entries a run
writes (:data:`RUN_ENTRIES`) and every change of settings made on ``--resume``. So:

- ``--overwrite`` deletes only those entries of a folder that holds a run; files the user put there stay, and a
  folder that holds no run is never emptied (nothing in it was written by a run, so nothing may be deleted).
- ``--resume`` compares the config with the run's (``train_config.json``, the config it started with, plus the changes
  in ``run.json``): what fixes the model or its data cannot change (refused with the keys), what can change is applied
  from the resumed step on and recorded in ``run.json`` with that step. ``train_config.json`` is never rewritten, so it
  always says what the first steps used.

Only the standard library here: the CLI runs these checks before importing torch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..utils.errors import InputError, OutputExistsError
from ..utils.io import write_json_atomic

RUN_RECORD = "run.json"
CONFIG_RECORD = "train_config.json"
# Everything a run writes in output_dir (the feature cache may live there too, but it is kept: see ``keep``).
RUN_ENTRIES = (RUN_RECORD, CONFIG_RECORD, "loss_log.csv", "checkpoints", "previews", "model", "tensorboard")
# Settings a resumed run applies from its next step (read from the config at every use, or re-applied to the optimizer
# by the trainer). Every other setting fixes the model, its data, its loss or the position in the data / schedule.
CHANGEABLE = ("max_steps", "max_minutes", "checkpoint_every", "keep_last", "log_every", "preview_images",
              "mixed_precision", "data.num_workers", "data.cache_dir", "optim.lr", "optim.betas", "optim.weight_decay",
              "optim.max_grad_norm")
TIME_SCHEDULES = ("cosine", "linear")  # with max_minutes only, these decay over the time budget (trainer)
_SECTIONS = ("model", "backbone", "data", "loss", "optim")


def read_run_record(folder: str | os.PathLike) -> dict | None:
    """``run.json`` of a run folder (``None`` when absent or unreadable)."""
    try:
        record = json.loads((Path(folder) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_run_record(folder: str | os.PathLike, changes: list[dict] | None = None) -> None:
    """Mark ``folder`` as a run's (``changes``: the resumes that changed settings, see :func:`resume_changes`)."""
    write_json_atomic(Path(folder) / RUN_RECORD, {"format": 1, "written_by": "uplift-diffusion train",
                                                  "entries": list(RUN_ENTRIES), "changes": changes or []})


def _entries(folder: Path, keep) -> list[Path]:
    kept = {Path(k).resolve() for k in keep if k}
    return [p for p in sorted(folder.iterdir()) if p.resolve() not in kept]


def _is_run(folder: Path, entries: list[Path]) -> bool:
    """A run's folder: it has ``run.json``, or (runs from before ``run.json``) ``train_config.json`` and nothing but
    the entries a run writes."""
    names = {p.name for p in entries}
    return RUN_RECORD in names or (CONFIG_RECORD in names and names <= set(RUN_ENTRIES))


def _names(paths: list[Path], limit: int = 4) -> str:
    return ", ".join(p.name for p in paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def prepare_run_folder(output_dir: str | os.PathLike, resume: bool, overwrite: bool,
                       keep: list[str | os.PathLike | None] = (), delete: bool = True) -> None:
    """Make sure a run never mixes with an earlier one, and never deletes a file that a run did not write.

    Args:
        output_dir: the run's folder.
        resume: continue the run in ``output_dir`` (refused when the folder holds files but no run).
        overwrite: delete the earlier run's entries (:data:`RUN_ENTRIES`) first; other files stay.
        keep: paths inside ``output_dir`` that are never a reason to refuse (e.g. the feature cache).
        delete: with ``overwrite``, delete the earlier run's entries (``False``: only check, e.g. before any weights
            load, or on the processes that do not write).

    Raises:
        InputError: ``resume`` and ``overwrite`` together.
        OutputExistsError: the folder holds a run (without ``resume`` / ``overwrite``) or files that no run wrote.
    """
    if resume and overwrite:
        raise InputError("--resume continues the run in output_dir and --overwrite deletes it: pass only one")
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    entries = _entries(folder, keep)
    if not entries:
        return
    if not _is_run(folder, entries):
        raise OutputExistsError(f"output_dir {folder} is not empty and holds no training run ({_names(entries)}); "
                                f"files a training run did not write are never deleted or mixed with one: choose an "
                                f"empty or new --output-dir")
    if resume:
        return
    if not overwrite:
        raise OutputExistsError(f"output_dir {folder} already holds a training run ({_names(entries)}); pass --resume "
                                f"to continue it, --overwrite to replace it, or choose another --output-dir")
    for entry in entries if delete else ():
        if entry.name in RUN_ENTRIES:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _flat(config: dict) -> dict[str, Any]:
    """Dotted keys of a config dict, one level into the sections (``optim.lr``; ``data.sources`` as a whole)."""
    flat = {}
    for key, value in config.items():
        if key in _SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif key != "output_dir":  # the folder itself: the same run whichever way its path is written
            flat[key] = value
    return flat


def recorded_config(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The flat settings the run in ``folder`` uses now: its ``train_config.json`` with the changes of every resume
    applied (``None`` when the folder has no ``train_config.json``)."""
    try:
        flat = _flat(json.loads((Path(folder) / CONFIG_RECORD).read_text()))
    except (OSError, ValueError):
        return None
    for change in (read_run_record(folder) or {}).get("changes", []):
        flat.update({k: new for k, (_old, new) in change.get("changed", {}).items()})
    return flat


def _has_checkpoint(folder: Path) -> bool:
    checkpoints = folder / "checkpoints"
    return checkpoints.is_dir() and any(p.name.startswith("checkpoint-") for p in checkpoints.iterdir())


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_changes(changes: dict[str, list]) -> str:
    """``optim.lr 0.001 -> 0.0005, max_steps 2 -> 3``."""
    return ", ".join(f"{k} {_short(old)} -> {_short(new)}" for k, (old, new) in changes.items())


def resume_changes(output_dir: str | os.PathLike, config: dict[str, Any]) -> dict[str, list]:
    """The settings ``config`` (a ``TrainConfig.to_dict()``) changes in the run it resumes: ``{key: [old, new]}``.

    Raises:
        InputError: a setting that cannot change on resume differs; the message names every such key.
    """
    folder = Path(output_dir)
    old = recorded_config(folder)
    if old is None or not _has_checkpoint(folder):
        return {}  # nothing to continue: the run starts from scratch with this config
    new = _flat(config)
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    fixed = [k for k in changed if k not in CHANGEABLE]
    if (changed.get("max_steps", [0, 0])[0] is None) != (changed.get("max_steps", [0, 0])[1] is None) \
            and new.get("optim.scheduler") in TIME_SCHEDULES:
        fixed.append("max_steps")  # between null and a number: the schedule would switch from time to steps
    if fixed:
        details = ", ".join(f"{k} ({_short(changed[k][0])} -> {_short(changed[k][1])})" for k in fixed)
        raise InputError(f"these settings cannot change on --resume: {details}; they fix the model, its data or its "
                         f"schedule. Restore them in the config, or start a new run (another --output-dir)")
    return changed
