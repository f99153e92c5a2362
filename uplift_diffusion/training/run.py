"""A training run's folder: what belongs to the run, what may be replaced, and what a resumed run may change.

A run marks its ``output_dir`` with ``run.json`` (written first, before any other file) listing the entries a run
writes (:data:`RUN_ENTRIES`) and every change of settings made on ``--resume``. So:

- ``--overwrite`` deletes only the files a run writes (:data:`RUN_FILES`: the names its writers give) in a folder that
  holds a run; files the user put there, also inside the run's folders (``previews/selected/``), stay, and a folder
  that holds no run is never emptied. ``model/`` is replaced as a whole when a run ends, so a file of the user's
  there is refused (with ``--overwrite`` and ``--resume``) rather than lost.
- ``--resume`` compares the config with the run's (``train_config.json``, the config it started with, plus the changes
  in ``run.json``): what fixes the model or its data cannot change (refused with the keys), what can change is applied
  from the resumed step on and recorded in ``run.json`` with that step. ``train_config.json`` is never rewritten, so it
  always says what the first steps used.

Only the standard library here: the CLI runs these checks before importing torch.
"""

from __future__ import annotations

import fnmatch
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
# The files (and whole folders: a checkpoint is written and pruned as one) a run writes, as patterns of their paths
# in output_dir: training.trainer (records, log, previews, TensorBoard), training.checkpoints (checkpoint-<step>,
# written through .checkpoint-<step>.tmp-<pid>) and save_pretrained (model/). Nothing else is ever deleted.
RUN_FILES = (RUN_RECORD, CONFIG_RECORD, "loss_log.csv", "checkpoints/checkpoint-[0-9]*",
             "checkpoints/.checkpoint-*.tmp-*", "previews/step-[0-9]*.png", "tensorboard/events.out.tfevents.*",
             "model/config.json", "model/diffusion_pytorch_model*.safetensors", "model/diffusion_pytorch_model*.bin",
             "model/*.safetensors.index.json")
LOCK_FILE = ".run.lock"  # held by a running `train` (uplift_diffusion.commands.train): one run per folder at a time
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
    return [p for p in sorted(folder.iterdir()) if p.resolve() not in kept and p.name != LOCK_FILE]


def _written_by_run(relative: str) -> bool:
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in RUN_FILES)


def _run_files(folder: Path, entries: list[Path]) -> list[Path]:
    """The files and checkpoint folders in ``entries`` that a run wrote (:data:`RUN_FILES`), deepest first."""
    found = []
    for entry in entries:
        if entry.name not in RUN_ENTRIES:
            continue
        stack = [entry]
        while stack:
            path = stack.pop()
            if _written_by_run(path.relative_to(folder).as_posix()):
                found.append(path)
            elif path.is_dir() and not path.is_symlink():
                stack += sorted(path.iterdir())
    return found


def _users_files_in_model(folder: Path) -> list[Path]:
    model = folder / "model"
    if not model.is_dir() or model.is_symlink():
        return []
    return [p for p in sorted(model.rglob("*")) if not p.is_dir()
            and not _written_by_run(p.relative_to(folder).as_posix())]


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
    if not (resume or overwrite):
        raise OutputExistsError(f"output_dir {folder} already holds a training run ({_names(entries)}); pass --resume "
                                f"to continue it, --overwrite to replace it, or choose another --output-dir")
    foreign = _users_files_in_model(folder)
    if foreign:
        names = ", ".join(p.relative_to(folder).as_posix() for p in foreign[:4])
        raise OutputExistsError(f"{names} in {folder} {'was' if len(foreign) == 1 else 'were'} not written by a run, "
                                f"and the run replaces model/ as a whole when it ends: move "
                                f"{'it' if len(foreign) == 1 else 'them'} out of {folder / 'model'} first")
    if resume or not delete:
        return
    for path in _run_files(folder, entries):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for entry in entries:  # the run's folders it emptied (the user's files keep theirs)
        if entry.name in RUN_ENTRIES and entry.is_dir() and not entry.is_symlink():
            for sub in sorted((p for p in entry.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [entry]:
                if not any(sub.iterdir()):
                    sub.rmdir()


class RunFolderLock:
    """One ``train`` per run folder at a time: an exclusive ``flock`` on ``output_dir/.run.lock``, held for the whole
    run by the process that starts it (the launcher of ``--num-processes N``, or the single process). The kernel
    releases it when that process ends in any way, SIGKILL included. Used as a context manager.

    Raises (on enter):
        OutputExistsError: another process holds the lock (the message names its pid).
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.folder = Path(output_dir)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._made_folder = False

    def __enter__(self) -> "RunFolderLock":
        import fcntl

        self._made_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputExistsError(f"output_dir {self.folder} is in use by another `train` (pid {holder}); wait "
                                        f"for it to end, or stop it, before starting or resuming a run there") from None
            try:  # the holder before us may have removed the file between our open and our lock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
            if self._made_folder and not any(self.folder.iterdir()):
                self.folder.rmdir()  # refused before anything was written: leave no empty folder behind
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


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
