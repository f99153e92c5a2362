"""Shared by the ``upscale`` and ``generate`` commands: device / dtype choice and loading models from the Hub or
local folders, with one-line errors that say how to work offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

DEFAULT_SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_UPSAMPLER = "UPLiFT-upsampler/uplift_sd1.5vae"
# --preset NAME of `upscale`: the (vae, upsampler) pair used where --vae / --upsampler are not given. None: the pair
# shipped inside the package under that name (uplift_diffusion.builtin, offline); else Hub ids / local folders.
PRESET_PAIRS = {"taef2": None, "sd15": (DEFAULT_SD_REPO, DEFAULT_UPSAMPLER)}
DEFAULT_PRESET = "taef2"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def add_device_arguments(parser) -> None:
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="weights dtype (default: float16 on cuda, float32 otherwise)")


def resolve_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ValueError(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine; use --device cpu")
    return dev, DTYPES[dtype] if dtype else (torch.float16 if dev.type == "cuda" else torch.float32)


def is_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and not Path(text).exists()


def _vae_classes() -> dict:
    from diffusers import AutoencoderKL, AutoencoderTiny

    from uplift_diffusion.backbones.taef2 import TAEF2

    return {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny, "TAEF2": TAEF2}


def _vae_class(config_file: Path, where: str):
    name = json.loads(config_file.read_text()).get("_class_name")
    classes = _vae_classes()
    if name not in classes:
        raise ValueError(f"{where}: unsupported VAE class {name!r}; supported: {', '.join(classes)}")
    return classes[name]


def load_vae(spec: str, dtype: torch.dtype):
    """A VAE from a local folder (diffusers VAE folder, pipeline folder with ``vae/``, taef2 ``*.pth`` files or the
    single-file ``taef2.safetensors``) or a Hub repo id (its ``vae`` subfolder when it has one, else
    ``taef2.safetensors``)."""
    from uplift_diffusion.backbones.taef2 import TAEF2

    path = Path(spec)
    if path.is_dir():
        taef2_files = ("taef2_encoder.pth", "taef2.safetensors")
        if any((path / name).is_file() for name in taef2_files) and not (path / "config.json").is_file():
            return TAEF2.from_pretrained(path, dtype=dtype)
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            path = path / "vae"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--vae {spec}: no config.json, vae/config.json, taef2.safetensors or "
                                    f"taef2_encoder.pth / taef2_decoder.pth in this folder")
        return _vae_class(path / "config.json", f"--vae {spec}").from_pretrained(path, dtype=dtype)
    if not is_repo_id(spec):
        raise FileNotFoundError(f"--vae {spec}: not a local folder nor a Hub repo id like {DEFAULT_SD_REPO!r}")

    from huggingface_hub import hf_hub_download

    how = (f"download it elsewhere (e.g. `hf download {spec} --include 'vae/*'`) and pass the local folder with "
           f"--vae DIR (a diffusers VAE folder, a pipeline folder with vae/, or a folder with taef2.safetensors or "
           f"taef2_*.pth files)")
    for subfolder in ("vae", None):
        try:
            config = Path(hf_hub_download(spec, "config.json", subfolder=subfolder))
            break
        except Exception:  # offline, missing file or repo: try the next layout, then report
            continue
    else:  # no diffusers config: the single-file taef2 layout (madebyollin/taef2), else report
        try:
            return TAEF2.from_pretrained(spec, dtype=dtype)
        except Exception:
            raise OSError(f"could not fetch the VAE from the Hugging Face Hub repo {spec!r} (vae/config.json and "
                          f"vae/diffusion_pytorch_model.safetensors, or taef2.safetensors); if this machine is "
                          f"offline, {how}") from None
    cls = _vae_class(config, f"--vae {spec}")
    try:
        return cls.from_pretrained(spec, subfolder=subfolder, dtype=dtype)
    except Exception as err:
        raise OSError(f"could not load the VAE weights of {spec!r} ({type(err).__name__}); {how}") from None


def load_upsampler(spec: str, dtype: torch.dtype):
    """An UPLiFTModel from a ``save_pretrained`` folder, a published checkpoint file / folder, or a Hub repo id."""
    from uplift_diffusion.model import UPLiFTModel

    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        return UPLiFTModel.from_pretrained(path, dtype=dtype).eval()
    if path.is_dir() and (path / "upsampler" / "config.json").is_file():
        return UPLiFTModel.from_pretrained(path, subfolder="upsampler", dtype=dtype).eval()
    try:
        return UPLiFTModel.from_reference_checkpoint(spec, dtype=dtype)
    except OSError as err:
        if path.exists():
            raise
        raise OSError(f"{err} (--upsampler FILE or DIR: a .safetensors checkpoint, or a folder saved with "
                      f"UPLiFTModel.save_pretrained)") from None


def load_pair(preset: str, vae: str | None, upsampler: str | None, dtype: torch.dtype):
    """``(vae, upsampler)`` models: ``--preset``'s pair, either part replaced by ``--vae`` / ``--upsampler``."""
    from uplift_diffusion import builtin

    if preset not in PRESET_PAIRS:
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(PRESET_PAIRS)}")
    hub_pair = PRESET_PAIRS[preset]
    if hub_pair is not None:
        vae, upsampler = vae or hub_pair[0], upsampler or hub_pair[1]
    vae_model = load_vae(vae, dtype) if vae else builtin.load_builtin_vae(preset, dtype)
    upsampler_model = load_upsampler(upsampler, dtype) if upsampler else builtin.load_builtin_upsampler(preset, dtype)
    return vae_model, upsampler_model
