"""TAEF2: the tiny FLUX.2 autoencoder (madebyollin/taesd) as a diffusers model.

diffusers' ``AutoencoderTiny`` cannot represent it: taef2's mid blocks have a GroupNorm "pool" branch, which
``AutoencoderTiny`` drops with only a warning (wrong outputs). This module builds the exact layer layout so that the
published ``taef2_encoder.pth`` / ``taef2_decoder.pth`` state dicts load strictly. The layers are in
:mod:`.taef2_layers`, how they run (whole or in exact tiles) in :mod:`.taef2_tiling`, their fused CPU kernels in the
backend (:mod:`uplift_diffusion.fast_paths`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from .taef2_layers import Clamp, TAEBlock, conv3x3
from .taef2_tiling import (
    LATENT_FACTOR,
    _check_tile,
    _exact_tile_spans,
    _finish_decode,
    _run_tiled,
    _run_units,
    _sizes,
    _stage_tile,
    _stages,
    _Unit,
    _units,
    fast_path_active,
    tiled_work,
    whole_work,
)

__all__ = ["LATENT_FACTOR", "TAEF2", "TAEBlock", "fast_path_active", "from_hub_layout", "to_hub_layout"]

# Memory model (float32; bf16 halves it), from peak-RSS rises measured on this CPU path (benchmarks/taef2_speed.py
# --memory prints measured vs estimated): 64-channel maps are 256 B per pixel, and a conv step holds ~4 of them
# (input, output, oneDNN's reorder buffers).
_ENCODE_BYTES_PER_PIXEL = 1100  # measured 768 (fast path) / 1033 (plain) per input pixel
_ENCODE_TILED_BYTES_PER_PIXEL = 160  # the image, its [0, 1] copy, the 1/2, 1/4, 1/8 stage maps (16 + 4 + 1 values)
_ENCODE_TILE_BYTES_PER_PIXEL = 3000  # one encoder tile's working set per pixel of its region (allocator caching incl.)
_DECODE_BYTES_PER_PIXEL = 1100  # measured 880-1050 per output pixel
_DECODE_TILED_BYTES_PER_PIXEL = 50  # the output canvas (float RGB, finished in place) and the whole-map features
_DECODE_TILE_BYTES_PER_PIXEL = 1700  # one decoder tile's working set per output pixel of the tile


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
    # nn.Module.to, not ModelMixin.to: diffusers 0.42's ModelMixin.to warns "There are modules in TAEF2 that should be
    # kept in float32: []" on every dtype cast (its empty list is tested against None); TAEF2 keeps none in float32.
    return nn.Module.to(model, dtype) if dtype is not None else model


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
        enc: list[nn.Module] = [conv3x3(3, c)]
        for i, n in enumerate(encoder_blocks):
            if i > 0:
                enc.append(conv3x3(c, c, stride=2, bias=False))
            enc += [TAEBlock(c, c, pooled=i == len(encoder_blocks) - 1) for _ in range(n)]
        enc.append(conv3x3(c, latent_channels))
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [Clamp(), conv3x3(latent_channels, c), nn.ReLU()]
        for i, n in enumerate(decoder_blocks):
            dec += [TAEBlock(c, c, pooled=i == 0) for _ in range(n)]
            if i < len(decoder_blocks) - 1:
                dec += [nn.Upsample(scale_factor=2), conv3x3(c, c, bias=False)]
        dec.append(conv3x3(c, 3))
        self.decoder = nn.Sequential(*dec)
        # The pool branches' GroupNorm sees the whole feature map: the decoder layers up to the last pooled block
        # must run on whole latents; the layers after it are local (convolutions, ReLU, nearest upsampling).
        pooled = [i for i, layer in enumerate(dec) if isinstance(layer, TAEBlock) and layer.pool is not None]
        self.decoder_local_from = pooled[-1] + 1

    def _load_part(self, part: str, state: dict, path: Path) -> None:
        """Load ``encoder`` / ``decoder`` weights read from ``path``; ValueError naming the file if they do not fit."""
        try:
            getattr(self, part).load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit the taef2 layout: {str(err).splitlines()[0]}") from None

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
            model._load_part(part, state, path)
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
            model._load_part(part, sequential_state, path)
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
        """RGB in [-1, 1] [B, 3, H, W] (H, W multiples of 8) -> raw latents [B, C, H/8, W/8].

        Args:
            x (`torch.Tensor`): the images, [B, 3, H, W] in [-1, 1].
            return_dict (`bool`, defaults to True): return an ``AutoencoderTinyOutput`` instead of a tuple.
        """
        latents = _run_units(_units(self.encoder), x.add(1).div(2), self).contiguous()
        return AutoencoderTinyOutput(latents=latents) if return_dict else (latents,)

    @apply_forward_hook
    def encode_local(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder layers before its first pooled block (local operations only): RGB in [-1, 1] -> features
        [B, 64, H/8, W/8]; :meth:`encode_global` finishes the encode. ``encode_global(encode_local(x))`` is
        ``encode(x)``; :meth:`encode_tiled` runs this part in tiles.

        Args:
            x (`torch.Tensor`): the images, [B, 3, H, W] in [-1, 1].
        """
        return _run_units(self._encoder_units()[0], x.add(1).div(2), self)

    @apply_forward_hook
    def encode_global(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder layers that need the whole map (the pooled blocks' GroupNorm statistics), at latent resolution:
        features from :meth:`encode_local` / :meth:`encode_tiled`'s first part -> raw latents [B, C, H/8, W/8].

        Args:
            features (`torch.Tensor`): [B, 64, H/8, W/8] features of whole images.
        """
        return _run_units(self._encoder_units()[1], features, self).contiguous()

    @apply_forward_hook
    def encode_tiled(self, x: torch.Tensor, tile_size: int = 512, progress: Callable | None = None) -> torch.Tensor:
        """:meth:`encode` with the full-resolution part run in tiles: raw latents equal to ``encode(x).latents`` up to
        float rounding (measured <= 1e-5), with working memory bounded by the tile instead of the image.

        The local layers run stage by stage (a stage ends with a stride-2 conv), each over exact tiles that read the
        halo their receptive field needs (4-11 pixels a side), into a map at the stage's output resolution (1/2, 1/4,
        1/8: 16 + 4 + 1 values per input pixel for 64 channels); the pooled blocks then run on whole latents.

        Args:
            x (`torch.Tensor`): the images, [B, 3, H, W] in [-1, 1], H and W multiples of 8.
            tile_size (`int`, defaults to 512): side of a tile in pixels of each stage's input (a multiple of 8).
            progress (`Callable`, *optional*): wraps each stage's list of tiles (e.g. a tqdm factory; the total over
                all stages is :meth:`encode_tile_count`).
        """
        _check_tile(tile_size)
        local, tail = self._encoder_units()
        t = x.add(1).div(2)
        for stage in _stages(local):
            t = _run_tiled(stage, t, _stage_tile(stage, tile_size), progress, self)
        return _run_units(tail, t, self).contiguous()

    def encode_tile_count(self, height: int, width: int, tile_size: int = 512) -> int:
        """How many tiles :meth:`encode_tiled` runs for an image of ``height`` x ``width`` pixels (a progress total).

        Args:
            height (`int`): image height in pixels.
            width (`int`): image width in pixels.
            tile_size (`int`, defaults to 512): as for :meth:`encode_tiled`.
        """
        count, size = 0, (height, width)
        for stage in _stages(self._encoder_units()[0]):
            size = _sizes(stage, size)[-1]
            tile = _stage_tile(stage, tile_size)
            count += len(_exact_tile_spans(size[0], tile)) * len(_exact_tile_spans(size[1], tile))
        return count

    def encode_tile_work(self, height: int, width: int, tile_size: int = 512) -> float:
        """The multiply-adds of :meth:`encode_tiled` over those of :meth:`encode` for an image of ``height`` x
        ``width`` pixels (each stage's tiles compute their halos twice), as the path this model runs on its device
        computes them: sizes a progress plan measured on an untiled run.

        Args:
            height (`int`): image height in pixels (a multiple of 8).
            width (`int`): image width in pixels (a multiple of 8).
            tile_size (`int`, defaults to 512): as for :meth:`encode_tiled`.
        """
        _check_tile(tile_size)
        local, tail = self._encoder_units()
        fast, size = self._runs_fast(), (height, width)
        tiled = whole = 0
        for stage in _stages(local):
            tiled += tiled_work(stage, size, _stage_tile(stage, tile_size), fast)
            whole += whole_work(stage, size, fast)
            size = _sizes(stage, size)[-1]
        common = whole_work(tail, size, fast)
        return (tiled + common) / max(whole + common, 1)

    def decode_tile_work(self, latent_height: int, latent_width: int, tile_size: int = 512) -> float:
        """The multiply-adds of :meth:`decode_tiled` over those of :meth:`decode` for latents of ``latent_height`` x
        ``latent_width`` (e.g. 1.036 for 1708 x 2560 latents in 1024-px tiles), as the path this model runs on its
        device computes them: sizes a progress plan measured on an untiled run.

        Args:
            latent_height (`int`): latent rows.
            latent_width (`int`): latent columns.
            tile_size (`int`, defaults to 512): as for :meth:`decode_tiled`.
        """
        _check_tile(tile_size)
        head, tail = _units(self.decoder[: self.decoder_local_from]), _units(self.decoder[self.decoder_local_from:])
        fast, size = self._runs_fast(), (latent_height, latent_width)
        common = whole_work(head, size, fast)
        return (common + tiled_work(tail, size, tile_size, fast)) / max(common + whole_work(tail, size, fast), 1)

    def _runs_fast(self) -> bool:
        """Whether inference on this model's device and dtype takes the fused kernels."""
        param = next(self.parameters())
        with torch.no_grad():
            return fast_path_active(torch.empty(0, device=param.device, dtype=param.dtype), self)

    def _encoder_units(self) -> tuple[list[_Unit], list[_Unit]]:
        """(local units, whole-map units) of the encoder, split before its first pooled block."""
        units = _units(self.encoder)
        first_global = next((i for i, unit in enumerate(units) if not unit.local), len(units))
        return units[:first_global], units[first_global:]

    def encode_memory(self, height: int, width: int, tile_size: int | None = None, batch: int = 1) -> int:
        """Bytes of working memory :meth:`encode` (``tile_size=None``) or :meth:`encode_tiled` needs for a batch of
        ``height`` x ``width`` images (activations only; weights are ~5 MB). Measured peak RSS rises on this module's
        CPU paths, rounded up: untiled ~0.8-1.0 kB per pixel (a 12 MP photo: ~12 GB); tiled, the stage maps plus the
        largest tile's working set (``(tile + 32)^2`` pixels at ~3 kB each, as oneDNN's buffers and the allocator
        keep them).

        Args:
            height (`int`): image height in pixels.
            width (`int`): image width in pixels.
            tile_size (`int`, *optional*): the tile of :meth:`encode_tiled`; ``None``: untiled.
            batch (`int`, defaults to 1): images encoded together.
        """
        scale = self._dtype_bytes() / 4 * batch
        if tile_size is None:
            return int(_ENCODE_BYTES_PER_PIXEL * height * width * scale)
        tile = _ENCODE_TILE_BYTES_PER_PIXEL * (tile_size + 32) ** 2
        return int((_ENCODE_TILED_BYTES_PER_PIXEL * height * width + tile) * scale)

    def decode_memory(self, latent_height: int, latent_width: int, tile_size: int | None = None, batch: int = 1
                      ) -> int:
        """Bytes of working memory :meth:`decode` (``tile_size=None``) or :meth:`decode_tiled` needs for latents of
        ``latent_height`` x ``latent_width`` (activations only; the caller's own copies of the output are not
        counted). Measured: untiled ~0.9-1.05 kB per output pixel (a 2048^2 output: ~4.4 GB); tiled, the output
        (and its [-1, 1] copies) plus one tile's working set.

        Args:
            latent_height (`int`): latent rows.
            latent_width (`int`): latent columns.
            tile_size (`int`, *optional*): the output tile of :meth:`decode_tiled`; ``None``: untiled.
            batch (`int`, defaults to 1): latents decoded together.
        """
        pixels = latent_height * latent_width * LATENT_FACTOR**2
        scale = self._dtype_bytes() / 4 * batch
        if tile_size is None:
            return int(_DECODE_BYTES_PER_PIXEL * pixels * scale)
        tile = _DECODE_TILE_BYTES_PER_PIXEL * (tile_size + 16) ** 2
        return int((_DECODE_TILED_BYTES_PER_PIXEL * pixels + tile) * scale)

    def _dtype_bytes(self) -> int:
        return next(self.parameters()).element_size()

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """Raw latents -> RGB in [-1, 1].

        Args:
            z (`torch.Tensor`): raw latents [B, C, h, w].
            return_dict (`bool`, defaults to True): return a ``DecoderOutput`` instead of a tuple.
            generator: unused (diffusers' decode signature).
        """
        sample = self.decode_local(self.decode_global(z))
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    @apply_forward_hook
    def decode_global(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder layers that need whole latents (their GroupNorm statistics): raw latents [B, C, h, w] ->
        features [B, 64, h, w], still at latent resolution. Cheap; :meth:`decode_local` finishes the decode.

        Args:
            z (`torch.Tensor`): raw latents [B, C, h, w] of whole images.
        """
        return _run_units(_units(self.decoder[: self.decoder_local_from]), z, self)

    @apply_forward_hook
    def decode_local(self, features: torch.Tensor) -> torch.Tensor:
        """The rest of the decoder, local operations only, so it can run tile by tile (with an overlap for its
        receptive field): features from :meth:`decode_global` (or a crop of them) -> RGB in [-1, 1], 8x larger.

        Args:
            features (`torch.Tensor`): [B, 64, h, w] from :meth:`decode_global`, or a crop of them.
        """
        return _finish_decode(_run_units(_units(self.decoder[self.decoder_local_from:]), features, self))

    @apply_forward_hook
    def decode_tiled(self, z: torch.Tensor, tile_size: int = 512, progress: Callable | None = None) -> torch.Tensor:
        """:meth:`decode` with the local part run in exact tiles: RGB in [-1, 1] equal to ``decode(z).sample`` up to
        float rounding (measured <= 1e-5), no blending. Each tile reads the features its receptive field needs and is
        cropped again before each upsample and block, so the full-resolution layers compute only a 5-pixel halo;
        the tiles' work is 1.03x (1024 px tiles), 1.05x (768), 1.08x (512) or 1.19x (256) the untiled decode's
        (2048^2 output).

        Args:
            z (`torch.Tensor`): raw latents [B, C, h, w] of whole images.
            tile_size (`int`, defaults to 512): side of an output tile in pixels (a multiple of 8).
            progress (`Callable`, *optional*): wraps the list of tiles (e.g. a tqdm factory; the total is
                :meth:`decode_tile_count`).
        """
        _check_tile(tile_size)
        units = _units(self.decoder[self.decoder_local_from:])
        return _finish_decode(_run_tiled(units, self.decode_global(z), tile_size, progress, self), inplace=True)

    def decode_tile_count(self, latent_height: int, latent_width: int, tile_size: int = 512) -> int:
        """How many tiles :meth:`decode_tiled` runs for latents of ``latent_height`` x ``latent_width``.

        Args:
            latent_height (`int`): latent rows.
            latent_width (`int`): latent columns.
            tile_size (`int`, defaults to 512): as for :meth:`decode_tiled`.
        """
        rows = _exact_tile_spans(latent_height * LATENT_FACTOR, tile_size)
        return len(rows) * len(_exact_tile_spans(latent_width * LATENT_FACTOR, tile_size))

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        decoded = self.decode(self.encode(sample).latents).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)
