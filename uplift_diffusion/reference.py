"""Reading the published UPLiFT checkpoints (reference key layout): find the file, read it safely, map the keys to our
names, tell which preset it belongs to and check every key and shape against the model class it is meant for (passed
in, so that this module never imports the model; :meth:`UPLiFTModel.from_reference_checkpoint` builds the model)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .presets import PRESETS, preset_for_repo, resolve_preset_name
from .utils.errors import CheckpointError

__all__ = ["CheckpointError", "check_finite", "read_reference_checkpoint", "read_state_dict",
           "to_reference_state_dict"]

# Our parameter names differ from the reference layout only here (reference prefix -> ours).
REFERENCE_RENAMES: tuple[tuple[str, str], ...] = (("ref_outc.", "refiner_out."),)
# Wrappers that training code adds in front of every key (DataParallel / DDP, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def reference_to_ours(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    for ref, ours in REFERENCE_RENAMES:
        if key.startswith(ref):
            return ours + key[len(ref):]
    return key


def ours_to_reference(key: str) -> str:
    for ref, ours in REFERENCE_RENAMES:
        if key.startswith(ours):
            return ref + key[len(ours):]
    return key


def to_reference_state_dict(model) -> dict[str, torch.Tensor]:
    """Our model's weights in the published key layout (e.g. to share with users of the reference code)."""
    return {ours_to_reference(k): v for k, v in model.state_dict().items()}


def check_finite(state: dict[str, torch.Tensor], file: str | os.PathLike) -> None:
    """Refuse weights holding NaN or inf (a damaged file whose header still reads): such a model returns NaN, i.e.
    black images. Raises :class:`CheckpointError` naming ``file``, the first bad tensor and how many are bad."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        first = state[bad[0]]
        count = int((~torch.isfinite(first)).sum())
        others = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise CheckpointError(f"{file}: tensor {bad[0]} holds {count} NaN / inf values of {first.numel()}{others}: the "
                              f"weights file is damaged; download or copy it again")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` state dict safely (no unpickling of arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt / truncated / not a checkpoint
        raise CheckpointError(f"could not read checkpoint {path}: it is corrupt, truncated or not a state dict "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    check_finite(state, path)
    return state


def _expected_shapes(model_cls, preset: str, **overrides: Any) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = model_cls.from_preset(preset, **overrides)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def compare_keys(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]):
    """(missing, unexpected, mis-shaped) keys of ``state`` against ``expected`` shapes (our names)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [(k, tuple(state[k].shape), expected[k]) for k in expected
                 if k in state and tuple(state[k].shape) != expected[k]]
    return missing, unexpected, misshaped


def _describe(missing, unexpected, misshaped, limit: int = 8) -> str:
    def fmt(items):
        items = [ours_to_reference(i) if isinstance(i, str) else i for i in items]
        shown = ", ".join(str(i) for i in items[:limit])
        return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {fmt(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {fmt(unexpected)}")
    if misshaped:
        parts.append("mis-shaped keys: " + fmt([f"{k} {got} (expected {exp})" for k, got, exp in misshaped]))
    return "; ".join(parts)


def matching_presets(state: dict[str, torch.Tensor], model_cls) -> list:
    """Names of the published presets whose key layout and shapes (as ``model_cls.from_preset`` builds them) the
    (our-named) ``state`` matches exactly."""
    return [name for name, p in PRESETS.items()
            if p.repo_id and not any(compare_keys(state, _expected_shapes(model_cls, name)))]


def download_reference_checkpoint(repo_id: str, filename: str | None = None) -> str:
    """Fetch a published checkpoint from the Hugging Face Hub; a clear error when offline."""
    from huggingface_hub import hf_hub_download

    if filename is None:
        known = [p for p in PRESETS.values() if p.repo_id == repo_id]
        filename = known[0].filename if known else f"{repo_id.split('/')[-1]}.safetensors"
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    except Exception as err:
        raise OSError(
            f"could not fetch {filename!r} from the Hugging Face Hub repo {repo_id!r} ({type(err).__name__}). "
            f"If this machine is offline, download https://huggingface.co/{repo_id}/resolve/main/{filename} "
            f"elsewhere and pass the local file path instead of the repo id."
        ) from None


def resolve_checkpoint_path(path_or_repo_id: str | os.PathLike) -> str:
    """A local checkpoint file from a file path, a folder holding one ``.safetensors`` file, or a Hub repo id."""
    path = Path(path_or_repo_id)
    if path.is_file():
        return str(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth"))
        if len(candidates) != 1:
            raise CheckpointError(f"expected exactly one .safetensors (or .pth) checkpoint in {path}, found "
                                  f"{[c.name for c in candidates] or 'none'}")
        return str(candidates[0])
    text = str(path_or_repo_id)
    if _REPO_ID.match(text) and not text.endswith(_CHECKPOINT_SUFFIXES):
        return download_reference_checkpoint(text)
    raise FileNotFoundError(f"checkpoint not found: {text} is neither a local file / folder nor a Hub repo id "
                            f"like 'UPLiFT-upsampler/uplift_sd1.5vae'")


def read_reference_checkpoint(path_or_repo_id, model_cls, preset: str | None = None,
                              **overrides: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Read a published checkpoint and check it against the model it is meant for.

    Args:
        path_or_repo_id: a ``.safetensors`` / ``.pth`` file, a folder with one, or a Hub repo id
            (e.g. ``"UPLiFT-upsampler/uplift_sd1.5vae"``).
        model_cls: the model class (with ``from_preset``) whose parameter names and shapes the checkpoint must fill.
        preset: the preset the checkpoint belongs to. When ``None`` it is inferred from the key layout; the two DINO
            presets share one layout and are told apart by the file / repo name.
        **overrides: config overrides for checkpoints of a customised preset.

    Returns:
        ``(state_dict, preset)``: the tensors under our parameter names (every key present, every shape right) and
        the resolved preset name.

    Raises:
        CheckpointError: unreadable file, a checkpoint of another preset, or missing / unexpected / mis-shaped keys.
    """
    file = resolve_checkpoint_path(path_or_repo_id)
    raw = read_state_dict(file)
    state = {reference_to_ours(k): v for k, v in raw.items()}
    hint = preset_for_repo(f"{path_or_repo_id} {Path(file).name}")
    if preset is None:
        matches = matching_presets(state, model_cls) if not overrides else []
        if len(matches) > 1:
            matches = [m for m in matches if m == hint] or matches
        if len(matches) != 1:
            if not matches:
                raise CheckpointError(f"{file} does not match the key layout of any published UPLiFT preset "
                                      f"({', '.join(p for p in PRESETS if PRESETS[p].repo_id)})",
                                      api_hint="pass preset=... (and config overrides for a custom model)")
            raise CheckpointError(f"{file} matches presets {matches} (same weights layout, different patch size)",
                                  api_hint="pass preset=... to choose")
        preset = matches[0]
    preset = resolve_preset_name(preset)
    problems = compare_keys(state, _expected_shapes(model_cls, preset, **overrides))
    if any(problems):
        others = [m for m in matching_presets(state, model_cls) if m != preset] if not overrides else []
        if others:
            raise CheckpointError(f"{file} is a checkpoint for preset {others[0]!r}, not {preset!r}")
        raise CheckpointError(f"{file} does not fit preset {preset!r}: {_describe(*problems)}")
    return state, preset
