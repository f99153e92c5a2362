"""The built-in model pairs shipped inside the package: they load offline, from the installed files, never the network.

``taef2``: the taef2 tiny autoencoder (FLUX.2's latent API: 32 channels, 8x; MIT, ``weights/taef2/``) and an UPLiFT
model trained here on its latents (``weights/uplift-taef2/``, a ``save_pretrained`` folder with its model card and
its measured quality as data, ``quality.json``: see :func:`read_model_quality`)::

    from uplift_diffusion import UPLiFTSuperResolutionPipeline

    pipe = UPLiFTSuperResolutionPipeline.from_builtin("taef2")
    big = pipe(image, scale=4).images[0]
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from uplift_diffusion.backbones.taef2 import TAEF2
from uplift_diffusion.model import UPLiFTModel
from uplift_diffusion.reference import check_finite
from uplift_diffusion.utils.errors import CheckpointError, InputError
from uplift_diffusion.utils.fingerprint import file_sha256
from uplift_diffusion.utils.logs import silence_empty_float32_notice


@dataclass(frozen=True)
class BuiltinPair:
    """Where a built-in pair's files live, as folder names under ``uplift_diffusion/weights/``.

    Attributes:
        vae: folder of the autoencoder (loaded with ``vae_class.from_pretrained``).
        upsampler: ``UPLiFTModel.save_pretrained`` folder of the upsampler trained on that autoencoder's latents.
        vae_class: the autoencoder's class.

    How the upsampler must be used (its colour correction) is recorded in its own config, not here.
    """

    vae: str
    upsampler: str
    vae_class: type = TAEF2


BUILTIN_PAIRS = {"taef2": BuiltinPair(vae="taef2", upsampler="uplift-taef2")}


def builtin_names() -> list[str]:
    """Names accepted by :func:`load_builtin_vae`, :func:`load_builtin_upsampler` and ``from_builtin``."""
    return sorted(BUILTIN_PAIRS)


def builtin_pair(name: str) -> BuiltinPair:
    if name not in BUILTIN_PAIRS:
        raise InputError(f"unknown built-in model {name!r}; available: {', '.join(builtin_names())}")
    return BUILTIN_PAIRS[name]


def weights_folder(folder: str) -> Path:
    """The installed folder ``uplift_diffusion/weights/<folder>`` (package data; an error names a broken install)."""
    path = Path(str(resources.files("uplift_diffusion") / "weights" / folder))
    if not path.is_dir():
        raise FileNotFoundError(f"built-in weights folder missing: {path}; the package was installed without its "
                                f"package data; reinstall it (pip install --force-reinstall uplift-diffusion)")
    return path


def builtin_vae_path(name: str = "taef2") -> Path:
    """Folder of the built-in pair's autoencoder."""
    return weights_folder(builtin_pair(name).vae)


def builtin_upsampler_path(name: str = "taef2") -> Path:
    """Folder of the built-in pair's UPLiFT model (``config.json``, ``diffusion_pytorch_model.safetensors``,
    ``README.md`` model card, ``quality.json`` measured quality)."""
    return weights_folder(builtin_pair(name).upsampler)


QUALITY_FILE = "quality.json"


@dataclass(frozen=True)
class Score:
    """One method's mean scores on a dataset: PSNR (dB), SSIM and, where measured, the latent-grid ratio."""

    psnr: float
    ssim: float
    grid_ratio: float | None = None


@dataclass(frozen=True)
class QualityRow:
    """The model against pixel bicubic at one scale and low-res protocol (how the low-res input was made)."""

    scale: int
    low_res: str
    model: Score
    pixel_bicubic: Score


@dataclass(frozen=True)
class Measurement:
    """One measured table: the dataset, the command that produced the numbers, how it ran, and its rows."""

    dataset: str
    command: str
    how: str
    results: tuple[QualityRow, ...]


@dataclass(frozen=True)
class ModelQuality:
    """An upsampler's measured quality, stored beside its weights as ``quality.json``; the first measurement is the
    headline (what the web page shows)."""

    model: str
    metrics: str
    measurements: tuple[Measurement, ...]


def read_model_quality(folder: str | Path) -> ModelQuality | None:
    """The ``quality.json`` of an upsampler folder (``None`` when the folder has none); CheckpointError naming the
    file when it is not the expected structure."""
    path = Path(folder) / QUALITY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        measurements = tuple(
            Measurement(dataset=str(m["dataset"]), command=str(m["command"]), how=str(m.get("how", "")),
                        results=tuple(QualityRow(scale=int(r["scale"]), low_res=str(r["low_res"]),
                                                 model=Score(**r["model"]), pixel_bicubic=Score(**r["pixel_bicubic"]))
                                      for r in m["results"]))
            for m in data["measurements"])
        return ModelQuality(model=str(data["model"]), metrics=str(data.get("metrics", "")),
                            measurements=measurements)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is not a model quality file ({type(err).__name__}: {err})") from None


DIGESTS_FILE = "digests.json"  # in each weights folder: the sha256 of its files, checked before they load
_RECORD_COMMAND = "python -m uplift_diffusion.builtin"


def _digested_files(folder: Path) -> list[Path]:
    """The files whose bytes decide what a built-in model computes: its weights and config (not its text files, nor
    its measured quality)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json", ".pth")
                  and p.name not in (DIGESTS_FILE, QUALITY_FILE))



def record_digests(folder: str | Path) -> Path:
    """Write ``folder/digests.json`` (the sha256 of each weights / config file); run after (re)training a built-in
    model: ``python -m uplift_diffusion.builtin``."""
    from uplift_diffusion.utils.io import write_json_atomic

    folder = Path(folder)
    return write_json_atomic(folder / DIGESTS_FILE, {"written_by": _RECORD_COMMAND, "sha256": {
        p.name: file_sha256(p) for p in _digested_files(folder)}})


@functools.lru_cache(maxsize=None)
def _check_digests(folder: Path, stamp: tuple) -> None:
    """Compare the installed files with the digests recorded when the package was built (once per process and
    file state: ``stamp`` is the files' sizes and modification times). Finite garbage in the weights (a bad copy, a
    disk error) passes every NaN / shape check and gives a plausible but wrong picture; this does not."""
    try:
        recorded = json.loads((folder / DIGESTS_FILE).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{folder / DIGESTS_FILE} is missing or unreadable ({type(err).__name__})") from None
    for name, expected in sorted(recorded.items()):
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path} is missing")
        if file_sha256(path) != expected:
            raise ValueError(f"{path} does not match the sha256 recorded when the package was built")


def verify_installed(folder: Path) -> None:
    """Raise ``ValueError`` naming the file when an installed weights folder differs from its recorded digests."""
    files = _digested_files(folder)
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    _check_digests(folder, stamp)


def _place(model: torch.nn.Module, device: str | torch.device | None):
    return (model.to(device) if device is not None else model).eval()


def _load_installed(name: str, part: str, load):
    """``load()``, with any failure to read the installed files (truncated, corrupt, NaN / inf weights) reported as a
    damaged installation: the user did not make these files, reinstalling replaces them."""
    silence_empty_float32_notice()  # the built-in models are cast to a dtype on every use (see utils.logs)
    try:
        return load()
    except (OSError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise CheckpointError(f"the built-in {name!r} {part} could not be loaded ({reason}); the installed files "
                              f"are damaged: reinstall the package (pip install --force-reinstall uplift-diffusion)"
                              ) from None


def _load_builtin(name: str, part: str, folder_of, load, device):
    """``load(folder)`` of a built-in pair's installed weights folder (``folder_of(name)``) after its digests check,
    placed on ``device``."""
    builtin_pair(name)  # an unknown name is the caller's error, not a damaged install

    def checked():
        folder = folder_of(name)
        verify_installed(folder)
        return load(folder)

    return _place(_load_installed(name, part, checked), device)


def load_builtin_vae(name: str = "taef2", dtype: torch.dtype | None = None,
                     device: str | torch.device | None = None) -> TAEF2:
    """The built-in pair's autoencoder, from the installed package files.

    Args:
        name: a built-in pair (see :func:`builtin_names`).
        dtype: weights dtype (default float32).
        device: where to put the model (default cpu).
    """
    def load(path):
        vae = builtin_pair(name).vae_class.from_pretrained(path, dtype=dtype)
        check_finite(vae.state_dict(), path)
        return vae

    return _load_builtin(name, "autoencoder", builtin_vae_path, load, device)


def load_builtin_upsampler(name: str = "taef2", dtype: torch.dtype | None = None,
                           device: str | torch.device | None = None) -> UPLiFTModel:
    """The built-in pair's UPLiFT model, from the installed package files (arguments as :func:`load_builtin_vae`)."""
    return _load_builtin(name, "upsampler", builtin_upsampler_path,
                         lambda path: UPLiFTModel.from_pretrained(path, dtype=dtype), device)


def load_builtin_pair(name: str = "taef2", dtype: torch.dtype | None = None,
                      device: str | torch.device | None = None) -> tuple[TAEF2, UPLiFTModel]:
    """``(autoencoder, upsampler)`` of a built-in pair (what ``upscale`` / ``serve`` load without --vae / --upsampler).
    """
    return load_builtin_vae(name, dtype, device), load_builtin_upsampler(name, dtype, device)


if __name__ == "__main__":  # record the digests of every built-in folder (after retraining a built-in model)
    for pair in BUILTIN_PAIRS.values():
        for part in (pair.vae, pair.upsampler):
            print(record_digests(weights_folder(part)))
