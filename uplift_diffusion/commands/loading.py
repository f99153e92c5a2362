"""Shared by the ``upscale`` and ``generate`` commands: device / dtype choice and loading models from the Hub or
local folders, with one-line errors that say how to work offline."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from uplift_diffusion.utils.device import add_device_arguments, resolve_device_dtype
from uplift_diffusion.utils.errors import CheckpointError, InputError, InputNotFoundError, UnavailableError
from uplift_diffusion.utils.hub import ensure_hub_reachable, hub_is_offline

DEFAULT_SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_FLUX2_REPO = "black-forest-labs/FLUX.2-klein-4B"  # --family flux2 of generate / eval coco / eval relaion
DEFAULT_UPSAMPLER = "UPLiFT-upsampler/uplift_sd1.5vae"
# --preset NAME of `upscale`: the (vae, upsampler) pair used where --vae / --upsampler are not given. None: the pair
# shipped inside the package under that name (uplift_diffusion.builtin, offline); else Hub ids / local folders.
PRESET_PAIRS = {"taef2": None, "sd15": (DEFAULT_SD_REPO, DEFAULT_UPSAMPLER)}
DEFAULT_PRESET = "taef2"
if TYPE_CHECKING:
    import torch

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
__all__ = ["add_device_arguments", "resolve_device_dtype"]  # the one device / dtype policy (utils.device)


def is_repo_id(text: str) -> bool:
    """``owner/name`` that is not a local path: neither the path nor its parent folder (``outputs/model``) exists."""
    path = Path(text)
    return bool(_REPO_ID.match(text)) and not path.exists() and not path.parent.exists()


def check_model_source(spec: str, flag: str) -> None:
    """A cheap check before any weights load: ``spec`` is an existing file / folder or a Hub repo id."""
    if not Path(spec).exists() and not is_repo_id(spec):
        raise InputNotFoundError(f"{flag} {spec}: no such file or folder (and not a Hub repo id like "
                                 f"{DEFAULT_SD_REPO!r})")


def _vae_classes() -> dict:
    from diffusers import AutoencoderKL, AutoencoderTiny

    from uplift_diffusion.backbones.taef2 import TAEF2

    return {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny, "TAEF2": TAEF2}


def _vae_class(config_file: Path, where: str):
    name = json.loads(config_file.read_text()).get("_class_name")
    classes = _vae_classes()
    if name not in classes:
        raise InputError(f"{where}: unsupported VAE class {name!r}; supported: {', '.join(classes)}")
    return classes[name]


def _load_local_vae(load, spec: str):
    """``load()`` of a local VAE folder, its failures to read the files (truncated, damaged, a partial download) in
    one line naming the folder."""
    try:
        return load()
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, EOFError, KeyError) as err:
        if isinstance(err, (InputError, InputNotFoundError)):
            raise
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(f"--vae {spec}: the VAE could not be loaded ({reason}); its files are damaged or "
                              f"incomplete (an interrupted download or copy?): fetch them again") from None


def load_vae(spec: str, dtype: torch.dtype):
    """A VAE from a local folder (diffusers VAE folder, pipeline folder with ``vae/``, taef2 ``*.pth`` files or the
    single-file ``taef2.safetensors``) or a Hub repo id (its ``vae`` subfolder when it has one, else
    ``taef2.safetensors``)."""
    from uplift_diffusion.backbones.taef2 import TAEF2

    path = Path(spec)
    if path.is_dir():
        taef2_files = ("taef2_encoder.pth", "taef2.safetensors")
        if any((path / name).is_file() for name in taef2_files) and not (path / "config.json").is_file():
            return _load_local_vae(lambda: TAEF2.from_pretrained(path, dtype=dtype), spec)
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise InputNotFoundError(f"--vae {spec}: no config.json, vae/config.json, taef2.safetensors or "
                                    f"taef2_encoder.pth / taef2_decoder.pth in this folder")
        vae_class = _vae_class(path / "config.json", f"--vae {spec}")
        return _load_local_vae(lambda: vae_class.from_pretrained(path, dtype=dtype), spec)
    if not is_repo_id(spec):
        raise InputNotFoundError(f"--vae {spec}: not a local folder nor a Hub repo id like {DEFAULT_SD_REPO!r}")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    ensure_hub_reachable()
    how = f"Download it elsewhere (hf download {spec} --include 'vae/*') and pass the local folder with --vae DIR."
    config, first_error = None, None
    for subfolder in ("vae", None):
        try:
            config = Path(hf_hub_download(spec, "config.json", subfolder=subfolder))
            break
        except Exception as err:  # noqa: BLE001  (kept and reported below)
            first_error = first_error or err
            if isinstance(err, LocalEntryNotFoundError) or not isinstance(err, (EntryNotFoundError,
                                                                               RepositoryNotFoundError)):
                break  # no connection / offline mode: every other layout would fail the same way
    if config is None and not isinstance(first_error, LocalEntryNotFoundError):
        try:  # no diffusers config: the single-file taef2 layout (madebyollin/taef2)
            return TAEF2.from_pretrained(spec, dtype=dtype)
        except Exception as err:  # noqa: BLE001
            first_error = first_error or err
    if config is None:
        raise UnavailableError(f"{_fetch_failure(f'The VAE of {spec}', spec, first_error)} {how}") from None
    cls = _vae_class(config, f"--vae {spec}")
    try:
        return cls.from_pretrained(spec, subfolder=subfolder, dtype=dtype)
    except OSError as err:
        raise UnavailableError(f"{_fetch_failure(f'The VAE weights of {spec}', spec, err)} {how}") from None


def _fetch_failure(what: str, repo: str, err: BaseException | None) -> str:
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


def load_upsampler(spec: str, dtype: torch.dtype):
    """An UPLiFTModel from a ``save_pretrained`` folder, a published checkpoint file / folder, or a Hub repo id."""
    from uplift_diffusion.model import UPLiFTModel

    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        return UPLiFTModel.from_pretrained(path, dtype=dtype).eval()
    if path.is_dir() and (path / "upsampler" / "config.json").is_file():
        return UPLiFTModel.from_pretrained(path, subfolder="upsampler", dtype=dtype).eval()
    if path.is_file() and path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
        raise InputError(f"--upsampler {spec} is the weights file of a folder saved with UPLiFTModel.save_pretrained: "
                         f"pass the folder (--upsampler {path.parent})")
    if not path.exists() and is_repo_id(spec):
        ensure_hub_reachable()
    try:
        return UPLiFTModel.from_reference_checkpoint(spec, dtype=dtype)
    except CheckpointError as err:
        if err.api_hint is None:
            raise
        # the library's advice is a Python argument (preset=...); the command's is what to pass instead
        raise CheckpointError(f"--upsampler {spec}: {err.message}; pass a published UPLiFT checkpoint (.safetensors "
                              f"or .pth) or a folder saved with UPLiFTModel.save_pretrained") from None
    except OSError:
        if path.exists():
            raise
        why = "is not downloaded and this machine is offline" if hub_is_offline() else "could not be fetched"
        raise UnavailableError(f"The UPLiFT upsampler {spec} {why}. Download its .safetensors file elsewhere (hf "
                               f"download {spec}) and pass the local file with --upsampler FILE.") from None


def load_pair(preset: str, vae: str | None, upsampler: str | None, dtype: torch.dtype):
    """``(vae, upsampler)`` models: ``--preset``'s pair, either part replaced by ``--vae`` / ``--upsampler``."""
    from uplift_diffusion import builtin

    if preset not in PRESET_PAIRS:
        raise InputError(f"unknown preset {preset!r}; available: {', '.join(PRESET_PAIRS)}")
    hub_pair = PRESET_PAIRS[preset]
    if hub_pair is not None:
        vae, upsampler = vae or hub_pair[0], upsampler or hub_pair[1]
    vae_model = load_vae(vae, dtype) if vae else builtin.load_builtin_vae(preset, dtype)
    upsampler_model = load_upsampler(upsampler, dtype) if upsampler else builtin.load_builtin_upsampler(preset, dtype)
    return vae_model, upsampler_model


def load_feature_extractor(args, device):
    """``UPLiFTFeatureExtractor.from_pretrained`` for the ``features`` / ``probe`` flags; offline, the advice names
    ``--backbone-weights``, not a Python call."""
    from uplift_diffusion.features import UPLiFTFeatureExtractor
    from uplift_diffusion.utils.errors import WeightsUnavailableError

    try:
        return UPLiFTFeatureExtractor.from_pretrained(args.backbone, backbone=args.backbone_weights,
                                                      upsampler=args.upsampler, device=device)
    except WeightsUnavailableError as err:
        raise UnavailableError(f"{err.message} and pass --backbone-weights path/to/model.safetensors (or its "
                               f"folder)") from None


def load_local_pipeline(load, folder: str | Path, flag: str = "--model"):
    """``load()`` of a local diffusers pipeline folder, after checking that every component its
    ``model_index.json`` names has its sub-folder; a missing, truncated or damaged component (a partial download) is
    one line naming the folder, not a traceback from deep in diffusers / transformers."""
    folder = Path(folder)
    how = "download it again (`hf download <repo> --local-dir DIR`)"
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    missing = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)
               and len(value) == 2 and None not in value and not (folder / name).is_dir()]
    if missing:
        raise InputNotFoundError(f"{flag} {folder}: component folder(s) {', '.join(missing)} missing (an interrupted "
                                 f"download?); {how}")
    try:
        return load()
    except (InputError, InputNotFoundError, UnavailableError):
        raise
    except (OSError, ValueError, RuntimeError, KeyError, EOFError) as err:
        reason = " ".join(str(err).split())[:240] or type(err).__name__
        raise CheckpointError(f"{flag} {folder}: the pipeline could not be loaded ({type(err).__name__}: {reason}); "
                              f"a component is damaged or incomplete: {how}") from None
