"""TAEF2: the tiny FLUX.2 autoencoder (madebyollin/taesd) as a diffusers model.

diffusers' ``AutoencoderTiny`` cannot represent it: taef2's mid blocks have a GroupNorm "pool" branch, which
``AutoencoderTiny`` drops with only a warning (wrong outputs). This module builds the exact layer layout so that the
published ``taef2_encoder.pth`` / ``taef2_decoder.pth`` state dicts load strictly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn


def _conv(c_in: int, c_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, **kwargs)


class TAEBlock(nn.Module):
    """TAESD residual block, optionally with taef2's pre-applied GroupNorm "pool" branch."""

    def __init__(self, c_in: int, c_out: int, pooled: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(c_in, c_out), nn.ReLU(), _conv(c_out, c_out), nn.ReLU(), _conv(c_out, c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = (
            nn.Sequential(nn.Conv2d(c_in, 4 * c_in, 1, bias=False), nn.GroupNorm(4, 4 * c_in), nn.ReLU(),
                          nn.Conv2d(4 * c_in, c_in, 1, bias=False))
            if pooled else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


TAESD_FILES = ("taef2_encoder.pth", "taef2_decoder.pth")
HUB_FILE = "taef2.safetensors"
# The Hub file names the Sequential layers ``{part}.layers.N``; its decoder omits the parameter-free Clamp, which is
# index 0 of taesd.py's decoder Sequential (and of ours), so decoder indices there are one lower than here.
HUB_INDEX_OFFSET = {"encoder": 0, "decoder": 1}


def from_hub_layout(state: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, dict[str, torch.Tensor]]:
    """Hub single-file keys (``decoder.layers.0.weight``) -> per-part Sequential state dicts (``{"decoder":
    {"1.weight": ...}}``, the ``taef2_*.pth`` layout)."""
    parts: dict[str, dict[str, torch.Tensor]] = {part: {} for part in HUB_INDEX_OFFSET}
    for key, value in state.items():
        pieces = key.split(".", 3)  # part, "layers", index, parameter name
        if len(pieces) != 4 or pieces[0] not in HUB_INDEX_OFFSET or pieces[1] != "layers" or not pieces[2].isdigit():
            raise ValueError(f"{source}: unexpected key {key!r} (the Hub taef2 layout: {{encoder,decoder}}.layers.N.*)")
        part, _, index, name = pieces
        parts[part][f"{int(index) + HUB_INDEX_OFFSET[part]}.{name}"] = value
    return parts


def to_hub_layout(model: "TAEF2") -> dict[str, torch.Tensor]:
    """The inverse of :func:`from_hub_layout`: a TAEF2's weights under the Hub single-file keys."""
    state = {}
    for part, offset in HUB_INDEX_OFFSET.items():
        for key, value in getattr(model, part).state_dict().items():
            index, rest = key.split(".", 1)
            state[f"{part}.layers.{int(index) - offset}.{rest}"] = value.detach().contiguous()
    return state


def _cast(model: "TAEF2", dtype: torch.dtype | None) -> "TAEF2":
    return model.to(dtype) if dtype is not None else model


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class TAEF2(ModelMixin, ConfigMixin):
    """Tiny autoencoder with taef2's layout; a drop-in ``vae`` for our pipelines (diffusers ``AutoencoderTiny`` API).

    ``encode`` takes RGB in [-1, 1] and returns ``AutoencoderTinyOutput(latents)`` (raw latents, scaling factor 1);
    ``decode`` returns ``DecoderOutput(sample)`` in [-1, 1]. Spatial factor 8.

    Args:
        latent_channels (`int`, defaults to 32): latent channels.
        channels (`int`, defaults to 64): width of every block.
        encoder_blocks (`list[int]`, defaults to [1, 3, 3, 3]): blocks per encoder stage; stages after the first
            start with a stride-2 conv; the last stage's blocks have the pool branch.
        decoder_blocks (`list[int]`, defaults to [3, 3, 3, 1]): blocks per decoder stage; the first stage's blocks have
            the pool branch; every stage but the last ends with a 2x nearest upsample and a conv.
        scaling_factor (`float`, defaults to 1.0): kept for diffusers compatibility (latents are used raw).
    """

    @register_to_config
    def __init__(self, latent_channels: int = 32, channels: int = 64, encoder_blocks: Sequence[int] = (1, 3, 3, 3),
                 decoder_blocks: Sequence[int] = (3, 3, 3, 1), scaling_factor: float = 1.0):
        super().__init__()
        c = channels
        enc: list[nn.Module] = [_conv(3, c)]
        for i, n in enumerate(encoder_blocks):
            if i > 0:
                enc.append(_conv(c, c, stride=2, bias=False))
            enc += [TAEBlock(c, c, pooled=i == len(encoder_blocks) - 1) for _ in range(n)]
        enc.append(_conv(c, latent_channels))
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [_Clamp(), _conv(latent_channels, c), nn.ReLU()]
        for i, n in enumerate(decoder_blocks):
            dec += [TAEBlock(c, c, pooled=i == 0) for _ in range(n)]
            if i < len(decoder_blocks) - 1:
                dec += [nn.Upsample(scale_factor=2), _conv(c, c, bias=False)]
        dec.append(_conv(c, 3))
        self.decoder = nn.Sequential(*dec)
        # The pool branches' GroupNorm sees the whole feature map: the decoder layers up to the last pooled block
        # must run on whole latents; the layers after it are local (convolutions, ReLU, nearest upsampling).
        pooled = [i for i, layer in enumerate(dec) if isinstance(layer, TAEBlock) and layer.pool is not None]
        self.decoder_local_from = pooled[-1] + 1

    @classmethod
    def from_taesd_files(cls, folder: str | os.PathLike, prefix: str = "taef2", **config) -> "TAEF2":
        """Load ``{prefix}_encoder.pth`` and ``{prefix}_decoder.pth`` (plain state dicts, read with weights_only)."""
        folder = Path(folder)
        model = cls(**config)
        for part in ("encoder", "decoder"):
            path = folder / f"{prefix}_{part}.pth"
            if not path.is_file():
                raise FileNotFoundError(f"taef2 weights not found: {path} (expected {prefix}_encoder.pth and "
                                        f"{prefix}_decoder.pth in {folder})")
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as err:
                raise ValueError(f"could not read {path}: corrupt or not a state dict ({type(err).__name__})") from None
            try:
                getattr(model, part).load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise ValueError(f"{path} does not fit the taef2 layout: {str(err).splitlines()[0]}") from None
        return model.eval()

    @classmethod
    def from_hub_file(cls, path: str | os.PathLike, **config) -> "TAEF2":
        """Load the Hub's single-file layout (``madebyollin/taef2``: ``taef2.safetensors`` with keys
        ``encoder.layers.N.*`` / ``decoder.layers.N.*``), e.g. the copy shipped inside this package."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"taef2 weights not found: {path}")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"could not read {path}: not a safetensors file ({err})") from None
        model = cls(**config)
        for part, sequential_state in from_hub_layout(state, source=str(path)).items():
            try:
                getattr(model, part).load_state_dict(sequential_state, strict=True)
            except RuntimeError as err:
                raise ValueError(f"{path} does not fit the taef2 layout: {str(err).splitlines()[0]}") from None
        return model.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers ``from_pretrained``; also accepts a folder with the original ``taef2_*.pth`` files, a folder or
        file in the Hub's single-file layout (``taef2.safetensors``), or a Hub repo id with that file
        (``madebyollin/taef2``)."""
        name = str(pretrained_model_name_or_path)
        folder = Path(name)
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if folder.is_dir() and not (folder / "config.json").is_file():
            if (folder / TAESD_FILES[0]).is_file():
                return _cast(cls.from_taesd_files(folder), dtype)
            if (folder / HUB_FILE).is_file():
                return _cast(cls.from_hub_file(folder / HUB_FILE), dtype)
        if folder.is_file() and folder.suffix == ".safetensors":
            return _cast(cls.from_hub_file(folder), dtype)
        if folder.exists():
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        # A Hub repo id: the published single file first, then a diffusers folder layout.
        from huggingface_hub import hf_hub_download

        try:
            hub_file = hf_hub_download(name, HUB_FILE, revision=kwargs.get("revision"))
        except Exception as hub_err:  # offline, no such repo, or a diffusers-layout repo: try that layout next
            try:
                return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
            except Exception:
                raise OSError(f"could not load TAEF2 from {name!r}: neither {HUB_FILE} ({type(hub_err).__name__}) "
                              f"nor a diffusers config.json could be fetched; offline, pass a local folder "
                              f"(taef2.safetensors or taef2_encoder.pth / taef2_decoder.pth)") from None
        return _cast(cls.from_hub_file(hub_file), dtype)

    # The entry points carry diffusers' offload hook (as AutoencoderTiny's do): under enable_model_cpu_offload the
    # pipeline calls encode / decode_global / decode_local, never forward, so without it the weights stay on the CPU.
    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """RGB in [-1, 1] [B, 3, H, W] (H, W multiples of 8) -> raw latents [B, C, H/8, W/8]."""
        latents = self.encoder(x.add(1).div(2))
        return AutoencoderTinyOutput(latents=latents) if return_dict else (latents,)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """Raw latents -> RGB in [-1, 1]."""
        sample = self.decode_local(self.decode_global(z))
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    @apply_forward_hook
    def decode_global(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder layers that need whole latents (their GroupNorm statistics): raw latents [B, C, h, w] ->
        features [B, 64, h, w], still at latent resolution. Cheap; :meth:`decode_local` finishes the decode."""
        return self.decoder[: self.decoder_local_from](z)

    @apply_forward_hook
    def decode_local(self, features: torch.Tensor) -> torch.Tensor:
        """The rest of the decoder, local operations only, so it can run tile by tile (with an overlap for its
        receptive field): features from :meth:`decode_global` (or a crop of them) -> RGB in [-1, 1], 8x larger."""
        return self.decoder[self.decoder_local_from:](features).clamp(0, 1).mul(2).sub(1)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        decoded = self.decode(self.encode(sample).latents).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)
