"""The one way to write a file: to a temporary file beside the target, flushed to the disk (``fsync``), then
``os.replace`` and an ``fsync`` of the folder (a reader never sees a half-written file; a crash, even a power loss,
never leaves one under the target's name). The result gets the permissions a plain ``open(path, "w")`` would give:
an existing file keeps its mode, a new one gets ``0o666`` minus the process umask (``tempfile.mkstemp`` alone would
leave ``0o600``: outputs unreadable to the group and others)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError, InputNotFoundError, UnavailableError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (reading it means setting it, so under a lock and restored at once)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's data to the disk (a folder: the names in it, e.g. a rename)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # file systems that cannot (some network mounts): the rename still keeps readers safe
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` (any function that writes a file at the path it is given: ``image.save``,
    ``np.savez``, ``safetensors.torch.save_file`` ...) and move the result to ``path`` in one step.

    The temporary file has the same suffix as ``path`` (writers that pick the format from it keep working) and is
    removed if ``write`` fails. Missing parent folders are created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _final_mode(path))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def write_folder_atomic(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_folder)`` (e.g. a model's ``save_pretrained``) on a new folder beside ``path`` and move it to
    ``path`` in one step, replacing an earlier folder there: a reader sees the old folder or the whole new one.

    Files get ``0o666`` and folders ``0o777`` minus the umask, as plain ``open`` / ``mkdir`` give (``mkdtemp`` makes
    ``0o700``; ``safetensors`` writes ``0o600``). The temporary folder is removed if ``write`` fails. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        write(str(tmp))
        umask = current_umask()
        for item in [tmp, *tmp.rglob("*")]:
            if not item.is_symlink():
                os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)
                _fsync(item)
        if path.exists() or path.is_symlink():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists() or old.is_symlink():
        old.unlink()
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_image_atomic(image, path: str | os.PathLike, **options) -> Path:
    """Save a PIL image (format from ``path``'s suffix; ``options``: the format's, e.g. ``compress_level``)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **options))


def to_json(value: Any) -> Any:
    """JSON form of the non-JSON values that configs carry: paths, dtypes, devices, numpy and torch scalars.
    Anything else raises TypeError naming it (``json.dump``'s ``default``)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(value, (torch.dtype, torch.device)):
            return str(value)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.item()
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot write a {type(value).__name__} to JSON ({value!r})")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented, key-sorted JSON (see :func:`to_json` for the extra types it accepts)."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=True, default=to_json) + "\n"
    return write_text_atomic(path, text)


def _same_file(a: Path, b: Path) -> bool:
    """The same file however it is reached (spelling, ``..``, symlink, hard link): same device and inode."""
    try:
        first, second = a.stat(), b.stat()
    except OSError:
        return a.resolve() == b.resolve()  # one does not exist yet: only a spelling of the same path can match
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def refuse_outputs_onto_inputs(outputs: list[str | os.PathLike], inputs: list[str | os.PathLike],
                               flag: str = "-o") -> None:
    """:class:`InputError` when an output path is one of the inputs (the same file, a symlink or a hard link to it):
    writing it would replace the user's original, so it is refused whatever ``--overwrite`` says."""
    sources = [Path(p) for p in inputs]
    for out in map(Path, outputs):
        for source in sources:
            if _same_file(out, source):
                raise InputError(f"{flag} {out} is an input ({source}): writing it would replace the original; "
                                 f"choose another output path")


def refuse_output_folder_in_inputs(output: str | os.PathLike, input_folders: list[str | os.PathLike],
                                   recursive: bool, flag: str = "-o") -> None:
    """:class:`InputError` when the output folder is an input folder (or, for inputs listed ``recursive``-ly, inside
    one): the next run would read its outputs as inputs (``a_x2_x2.png``, a results grid scored as a photo)."""
    out = Path(output).resolve()
    for folder in map(Path, input_folders):
        if not folder.is_dir():
            continue
        inside = out == folder.resolve() or (recursive and folder.resolve() in out.parents)
        if inside:
            raise InputError(f"{flag} {output} is {'inside ' if out != folder.resolve() else ''}the input folder "
                             f"{folder}: its outputs would be read as inputs on the next run; choose a folder "
                             f"outside it")


def ensure_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that files can be written there (:class:`UnavailableError` naming
    the reason otherwise)."""
    folder = Path(folder)
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # mkdir would only say "File exists"
        what = "is an existing file" if blocking == folder else f"is not writable: {blocking} is a file"
        raise UnavailableError(f"output folder {folder} {what}, not a folder; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UnavailableError(f"output folder {folder} is not writable ({reason})") from None
    return folder


def require_path(path: str | os.PathLike, kind: str, what: str, not_found: str | None = None) -> Path:
    """``path`` exists as a ``"file"``, a ``"folder"`` or (``"file or folder"``) either; returns it as a Path.

    Raises:
        InputNotFoundError: nothing is there (``not_found``, or a message naming ``what``, e.g. ``"--images"``).
        InputError: a folder is there where a file is expected, or a file where a folder is.
    """
    p = Path(path)
    if kind == "file" and p.is_dir():
        raise InputError(f"{what} {p} is a folder, not a file; name a file in it")
    if kind == "folder" and p.exists() and not p.is_dir():
        raise InputError(f"{what} {p} is a file, not a folder; name the folder that holds it")
    if not (p.is_file() if kind == "file" else p.is_dir() if kind == "folder" else p.exists()):
        raise InputNotFoundError(not_found or f"{what} {p}: no such {kind}")
    return p
