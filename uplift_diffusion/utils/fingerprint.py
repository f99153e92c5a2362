"""Fingerprints: a small JSON record of everything that determines an output (model config and a hash of its
weights, the VAE, every flag that changes pixels, seeds, steps ...), stored next to the outputs. A rerun into the
same folder compares its own fingerprint with the stored one: equal, the outputs are reused (resume); different,
the run is refused with the list of what differs, so results never silently belong to other settings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .dtypes import dtype_name
from .errors import StaleResultsError
from .io import to_json, write_json_atomic

FINGERPRINT_FILE = "fingerprint.json"


def weights_hash(module) -> str:
    """sha256 over every tensor of ``module.state_dict()`` (names, dtypes, shapes and all bytes); 16 hex digits."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, 16 hex digits: what an input *is*, whatever its name (an image replaced under the
    same name changes it)."""
    return file_sha256(path)[:16]


def module_identity(module) -> dict[str, Any] | None:
    """What a component is: its class, its public config (diffusers ``config`` without the ``_``-prefixed
    bookkeeping such as the folder it came from) and, for torch modules, its dtype and :func:`weights_hash`."""
    if module is None:
        return None
    identity: dict[str, Any] = {"class": type(module).__name__}
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "items"):
        identity["config"] = canonical({k: v for k, v in config.items() if not str(k).startswith("_")})
    if hasattr(module, "state_dict") and hasattr(module, "parameters"):
        param = next(module.parameters(), None)
        identity["dtype"] = dtype_name(param.dtype) if param is not None else None
        identity["weights_sha256"] = weights_hash(module)
    elif getattr(module, "name_or_path", None) is not None:  # tokenizers
        identity["name_or_path"] = str(module.name_or_path)
    return identity


def canonical(value: Any) -> Any:
    """The JSON form of ``value`` (tuples -> lists, paths / dtypes -> strings), as it reads back from disk."""
    return json.loads(json.dumps(value, sort_keys=True, default=to_json))


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"key: old -> new"`` for every leaf that differs (nested dicts as dotted keys, long values shortened)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += differences(old.get(key, "<missing>"), new.get(key, "<missing>"), f"{prefix}{key}.")
        return out
    if old == new:
        return []

    def short(v: Any) -> str:
        text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
        return text if len(text) <= 60 else text[:57] + "..."

    return [f"{prefix.rstrip('.') or 'value'}: {short(old)} -> {short(new)}"]


def check_fingerprint(saved: Any, current: dict[str, Any], what: str, how: str) -> None:
    """Raise :class:`StaleResultsError` when ``saved`` (a stored fingerprint, ``None`` when there is none) differs
    from ``current``; ``what`` names the outputs, ``how`` says how to proceed."""
    current = canonical(current)
    if saved == current:
        return
    if saved is None:
        raise StaleResultsError(f"{what} has no record of the settings that made it (written by an older version, or "
                                f"by hand), so it cannot be reused safely; {how}")
    diff = differences(saved, current)
    raise StaleResultsError(f"{what} was made with other settings ({'; '.join(diff[:6])}"
                            f"{f'; and {len(diff) - 6} more' if len(diff) > 6 else ''}); {how}")


def read_fingerprint(path: str | Path) -> Any:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def write_fingerprint(path: str | Path, fingerprint: dict[str, Any]) -> None:
    write_json_atomic(path, canonical(fingerprint))
