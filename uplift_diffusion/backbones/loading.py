"""The one VAE loader: a diffusers VAE, a pipeline's ``vae/`` or taef2, from a local folder or a Hub repo id, with
one-line errors that name the source and say how to work offline. The CLI (``--vae``), training (``backbone.type
"vae"``) and the benchmarks use it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..utils.errors import InputError, InputNotFoundError, UnavailableError, load_reporting_damage
from ..utils.hub import ensure_hub_reachable, hub_is_offline

if TYPE_CHECKING:
    import torch

EXAMPLE_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # named in the errors as what a Hub repo id looks like
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TAEF2_FILES = ("taef2_encoder.pth", "taef2.safetensors")


def is_repo_id(text: str) -> bool:
    """``owner/name`` that is not a local path: neither the path nor its parent folder (``outputs/model``) exists."""
    path = Path(text)
    return bool(_REPO_ID.match(text)) and not path.exists() and not path.parent.exists()


def vae_classes() -> dict:
    """The VAE classes a folder's ``config.json`` may name (``_class_name``)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    from .taef2 import TAEF2

    return {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny, "TAEF2": TAEF2}


def _config_class(config_file: Path, label: str):
    """The class ``config_file`` names; ``None`` when it names none or cannot be read (then the loader tries the
    diffusers autoencoders in turn and reports each one's cause)."""
    try:
        name = json.loads(config_file.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    if name is None:
        return None
    classes = vae_classes()
    if name not in classes:
        raise InputError(f"{label}: unsupported VAE class {name!r}; supported: {', '.join(classes)}")
    return classes[name]


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"


def _load_any(source, label: str, dtype, **kwargs):
    """A config without a readable ``_class_name``: an ``AutoencoderKL``, else an ``AutoencoderTiny``; both causes
    in one line when it is neither."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    try:
        return AutoencoderKL.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as kl_error:
        try:
            return AutoencoderTiny.from_pretrained(source, dtype=dtype, **kwargs)
        except (OSError, ValueError) as tiny_error:
            raise InputError(f"{label} is neither an AutoencoderKL ({_first_line(kl_error)}) nor an AutoencoderTiny "
                             f"({_first_line(tiny_error)})") from kl_error


def _load_local(load, label: str):
    """``load()`` of a local VAE folder, its failures to read the files in one line naming the folder."""
    return load_reporting_damage(load, lambda err, reason: (
        f"{label}: the VAE could not be loaded ({reason}); its files are damaged or incomplete (an interrupted "
        f"download or copy?): fetch them again"))


def load_vae(source: str, dtype: torch.dtype | None = None, subfolder: str | None = None, label: str | None = None):
    """A VAE from a local folder (diffusers VAE folder, pipeline folder with ``vae/``, taef2 ``*.pth`` files or the
    single-file ``taef2.safetensors``) or a Hub repo id (its ``subfolder``; by default its ``vae`` subfolder when it
    has one, else its root or ``taef2.safetensors``). The class is the one the folder's ``config.json`` names.

    Args:
        source: local folder or Hub repo id.
        dtype: weights dtype (default float32).
        subfolder: the VAE's subfolder (default: ``vae`` when there is one).
        label: how errors name the source (default ``--vae SOURCE``, the CLI flag).
    """
    from .taef2 import TAEF2

    label = label or f"--vae {source}"
    path = Path(source)
    if path.is_dir():
        if subfolder:
            path = path / subfolder
        if any((path / name).is_file() for name in TAEF2_FILES) and not (path / "config.json").is_file():
            return _load_local(lambda: TAEF2.from_pretrained(path, dtype=dtype), label)
        if not subfolder and not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise InputNotFoundError(f"{label}: no config.json, vae/config.json, taef2.safetensors or "
                                     f"taef2_encoder.pth / taef2_decoder.pth in this folder")
        vae_class = _config_class(path / "config.json", label)
        if vae_class is None:
            return _load_any(path, label, dtype)
        return _load_local(lambda: vae_class.from_pretrained(path, dtype=dtype), label)
    if not is_repo_id(source):
        raise InputNotFoundError(f"{label}: not a local folder nor a Hub repo id like {EXAMPLE_REPO!r}")
    return _load_hub_vae(source, dtype, subfolder, label)


def _load_hub_vae(repo: str, dtype, subfolder: str | None, label: str):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    from .taef2 import TAEF2

    ensure_hub_reachable()
    how = (f"Download it elsewhere (hf download {repo} --include '{subfolder or 'vae'}/*') and pass the local "
           f"folder{' with --vae DIR' if label.startswith('--vae') else ''}.")
    config, first_error, found_in = None, None, None
    for found_in in ((subfolder,) if subfolder else ("vae", None)):
        try:
            config = Path(hf_hub_download(repo, "config.json", subfolder=found_in))
            break
        except Exception as err:  # noqa: BLE001  (kept and reported below)
            first_error = first_error or err
            if isinstance(err, LocalEntryNotFoundError) or not isinstance(err, (EntryNotFoundError,
                                                                               RepositoryNotFoundError)):
                break  # no connection / offline mode: every other layout would fail the same way
    if config is None and not subfolder and not isinstance(first_error, LocalEntryNotFoundError):
        try:  # no diffusers config: the single-file taef2 layout (madebyollin/taef2)
            return TAEF2.from_pretrained(repo, dtype=dtype)
        except Exception as err:  # noqa: BLE001
            first_error = first_error or err
    if config is None:
        raise UnavailableError(f"{fetch_failure(f'The VAE of {repo}', repo, first_error)} {how}") from None
    vae_class = _config_class(config, label)
    kwargs = {"subfolder": found_in} if found_in else {}
    if vae_class is None:
        return _load_any(repo, label, dtype, **kwargs)
    try:
        return vae_class.from_pretrained(repo, dtype=dtype, **kwargs)
    except OSError as err:
        raise UnavailableError(f"{fetch_failure(f'The VAE weights of {repo}', repo, err)} {how}") from None


def fetch_failure(what: str, repo: str, err: BaseException | None) -> str:
    """Why ``what`` could not come from the Hub, as one short sentence: the Hub's own messages are paragraphs that a
    one-line error would cut mid-word, so only their kind is told (``--debug`` shows them whole)."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(err, LocalEntryNotFoundError) or hub_is_offline():
        return f"{what} is not downloaded and this machine is offline."
    if isinstance(err, RepositoryNotFoundError):
        return f"The Hub has no repo {repo} (or it is private: log in with hf auth login)."
    if isinstance(err, EntryNotFoundError):
        return f"{repo} holds neither vae/config.json nor taef2.safetensors."
    return f"{what} could not be fetched ({type(err).__name__})."
