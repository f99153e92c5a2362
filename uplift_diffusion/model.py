"""UPLiFTModel: the UPLiFT feature upsampler as a diffusers model."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .attender import LocalAttender, neighbourhood_offsets
from .blocks import NORM_TYPES, BlockGroup, Conv2d, UpStep, concat_channels, nearest_resize
from .color import ColorCorrection, sharpness
from .presets import get_preset, preset_config
from .reference import check_finite, read_reference_checkpoint
from .utils.errors import CheckpointError, InputError, UserError
from .utils.image_ops import bilinear_resize, imagenet_normalize

IMAGE_NORMALIZATIONS = ("unit", "imagenet")
GUIDE_CONDITIONS = ("decoded", "sharpness")
GroupSpec = dict  # {"out_channels": int, "num_blocks": int, "num_convs": int}
_SD15_REFINER = get_preset("sd15-vae").config["refiner_blocks"]


def _check_group(spec: Any, where: str) -> dict:
    keys = {"out_channels", "num_blocks", "num_convs"}
    if not isinstance(spec, dict) or set(spec) != keys:
        raise InputError(f"{where} must be a dict with keys {sorted(keys)}, got {spec!r}")
    if min(spec.values()) < 1:
        raise InputError(f"{where}: every entry must be >= 1, got {spec!r}")
    return spec


class UPLiFTEncoder(nn.Module):
    """Dense image encoder: block groups at the image's full resolution; returns every group's output.
    ``condition_channels``: constant planes after the image's channels (``UPLiFTModel``'s ``guide_conditions``),
    read by the first conv and kept out of its residual."""

    def __init__(self, image_channels: int, groups: Sequence[GroupSpec], norm_type: str, condition_channels: int = 0):
        super().__init__()
        widths = [image_channels + condition_channels] + [g["out_channels"] for g in groups]
        for i, g in enumerate(groups):
            group = BlockGroup(widths[i], g["out_channels"], g["num_blocks"], g["num_convs"], norm_type)
            self.add_module(f"block_{i}", group)
        if condition_channels:
            # The conditions are constant planes: through the residual rule they would shift whole feature maps.
            self.block_0.blocks[0].residual_channels = image_channels
        self.num_groups = len(groups)

    def forward(self, image: torch.Tensor, deepest_stride: int = 1) -> list[torch.Tensor]:
        """``deepest_stride`` s > 1: the deepest output only at the pixels ``[::s, ::s]`` ([B, C, H/s, W/s]), the
        only ones that steps sampling it at H/s or coarser read (see :meth:`UPLiFTModel.encode_image`)."""
        outputs = []
        x = image
        for i in range(self.num_groups):
            group = getattr(self, f"block_{i}")
            x = group(x, deepest_stride) if i == self.num_groups - 1 else group(x)  # [B, C_i, H, W]
            outputs.append(x)
        return outputs

    def deepest_stride(self, size: Sequence[int], finest: Sequence[int]) -> int:
        """The stride s at which the deepest output can be computed when it is read at ``finest`` (H/s, W/s) or
        coarser: the largest exact one, or 1 (no shortcut: uneven sizes, a two-conv last block, training)."""
        (h, w), (fh, fw) = size, finest
        last = getattr(self, f"block_{self.num_groups - 1}")
        if self.training or not last.can_stride_last or fh < 1 or h % fh or w % fw or h // fh != w // fw:
            return 1
        return h // fh


class UPLiFTDecoder(nn.Module):
    """One 2x step's guide predictor: block_0 at the input size, up_1 (2x), block_1 at the output size."""

    def __init__(self, in_channels: int, guide_channels: Sequence[int], noise_channels: int,
                 groups: Sequence[GroupSpec], norm_type: str):
        super().__init__()
        first, second = groups
        self.block_0 = BlockGroup(in_channels + guide_channels[0] + noise_channels, first["out_channels"],
                                  first["num_blocks"], first["num_convs"], norm_type)
        self.up_1 = UpStep(first["out_channels"], first["out_channels"])
        self.block_1 = BlockGroup(first["out_channels"] + guide_channels[1] + noise_channels, second["out_channels"],
                                  second["num_blocks"], second["num_convs"], norm_type)


LATENT_SPACE_FIELDS = ("vae", "fingerprint", "latent_channels", "scaling_factor", "shift_factor")


def _check_latent_space(record: dict | None, in_channels: int) -> None:
    """InputError unless ``record`` is None or a latent-space record for ``in_channels``-channel latents."""
    if record is None:
        return
    if not isinstance(record, dict) or set(record) != set(LATENT_SPACE_FIELDS):
        raise InputError(f"latent_space must be a dict with the keys {', '.join(LATENT_SPACE_FIELDS)}, got "
                         f"{record!r}")
    if record["latent_channels"] != in_channels:
        raise InputError(f"latent_space records {record['latent_channels']} latent channels but in_channels is "
                         f"{in_channels}")


def _check_guide_conditions(conditions: list[str] | None) -> None:
    if conditions is None:
        return
    if (isinstance(conditions, str) or not isinstance(conditions, (list, tuple))
            or any(c not in GUIDE_CONDITIONS for c in conditions) or len(set(conditions)) != len(conditions)):
        raise InputError(f"guide_conditions must be None or a list of distinct names from {GUIDE_CONDITIONS}, got "
                         f"{conditions!r}")


class UPLiFTModel(ModelMixin, ConfigMixin):
    r"""UPLiFT: an iterative 2x feature upsampler guided by the image, built around the Local Attender.

    The encoder runs once on the image and its outputs ``[e_0 ... e_{L-1}]`` guide every step; one step doubles the
    resolution of the features with shared weights:

    ``x -> cat(x, e_{L-1}, noise) -> block_0 -> up_1 (2x) -> cat(., e_{L-2}, noise) -> block_1 = guide``,
    ``LocalAttender(guide, x)`` -> [``cat(., e_{L-1}, noise) -> refiner -> refiner_out``] -> next step's input.

    The defaults build the ``"sd15-vae"`` preset (53.5M parameters); the saved config always holds concrete values.

    Args:
        in_channels (`int`, defaults to 4): channels C of the features being upsampled (4 for SD 1.5 latents, 384
            for DINO ViT-S).
        image_channels (`int`, defaults to 3): channels of the guiding image.
        patch_size (`int`, defaults to 8): pixels per feature token of the backbone. The image must be exactly
            ``patch_size`` times the feature map. Patch 14 images are resized to the 16-pixel grid first.
        encoder_blocks (`list[dict]`, defaults to sd15-vae's): one spec per encoder group, ``{"out_channels",
            "num_blocks", "num_convs"}``; at least two groups (the decoder uses the last two outputs).
        decoder_blocks (`list[dict]`, defaults to sd15-vae's): exactly two specs: the block group before the 2x
            up-step and the one after it. The second group's width is the guide width of the Local Attender.
        refiner_blocks (`dict`, defaults to sd15-vae's): spec of the refiner after the attender (VAE presets),
            followed by a 1x1 conv back to ``in_channels``; ``None`` for no refiner.
        norm_type (`str`, defaults to ``"layer"``): ``"layer"`` (channel LayerNorm, eps 1e-6) or ``"batch"``.
        noise_channels (`int`, defaults to 4): Gaussian noise channels concatenated before each block group of a
            step (0 disables them).
        noise_scale (`float`, defaults to 1.0): standard deviation of the noise channels.
        neighbourhood_size (`int`, defaults to 17): Local Attender neighbourhood n (5, 9, 13, 17 or 25).
        image_normalization (`str`, defaults to ``"unit"``): convention of the ``image`` argument; ``"unit"`` is RGB
            in [0, 1] (VAE presets), ``"imagenet"`` is ImageNet mean/std normalised (DINO presets). See
            :meth:`normalize_image`.
        color_correction (`str`, defaults to ``"mean"``): how images decoded from this model's output must be
            colour-corrected (VAE presets): ``"mean"`` (paper B.1, the published checkpoints) or ``"detail"`` (for
            models trained with it in their loss, such as the built-in taef2 model). Not used by the model itself:
            it is part of the checkpoint so that every pipeline built with it applies the correction its measured
            quality depends on (see [`~uplift_diffusion.ColorCorrection`]).
        detail_sigma (`float`, defaults to 0.5): the ``"detail"`` correction's Gaussian sigma in units of the
            upscaling factor (the value the model was trained with).
        detail_strength (`list[float]`, *optional*): the ``"detail"`` correction's factor on this model's detail, one
            per UPLiFT step count (2x, 4x, 8x), measured on held-out photos after training
            (``benchmarks/fit_detail_strength.py``); ``None``: 1 (the detail as decoded).
        guide_conditions (`list[str]`, *optional*): what the model is told about its guide, each as one constant
            channel that :meth:`normalize_image` appends to the RGB image: ``"decoded"`` (1 when the guide is a
            decode of the latents being upsampled, as in generation; 0 for a photo) and ``"sharpness"`` (the
            guide's :func:`~uplift_diffusion.color.sharpness`, which tells an antialiased low-res input from an
            aliased one). A convnet sees only a neighbourhood of the guide; these are properties of the whole of
            it. ``None``: the RGB image only (the published checkpoints).
        guide_condition_scale (`float`, defaults to 1.0): the condition channels are multiplied by it. Adam moves a
            weight by about its learning rate per step whatever the gradient's size, so a larger scale lets
            zero-initialised condition weights change what the model computes that many times faster.
        latent_space (`dict`, *optional*): the latent space a VAE-preset model was trained for, as
            ``uplift_diffusion.backbones.vae.latent_space_record`` writes it: ``{"vae": name, "fingerprint": ...,
            "latent_channels": C, "scaling_factor": s, "shift_factor": t}``. Pipelines refuse a VAE of another
            channel count (naming both) and warn once when the channels match but the VAE's fingerprint does not.
            ``None`` (feature presets, models saved before the record): only the channel count is checked.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        image_channels: int = 3,
        patch_size: int = 8,
        encoder_blocks: list[dict] | None = None,
        decoder_blocks: list[dict] | None = None,
        refiner_blocks: dict | None = _SD15_REFINER,  # noqa: B006  (read, never mutated)
        norm_type: str = "layer",
        noise_channels: int = 4,
        noise_scale: float = 1.0,
        neighbourhood_size: int = 17,
        image_normalization: str = "unit",
        color_correction: str = "mean",
        detail_sigma: float = 0.5,
        latent_space: dict | None = None,
        detail_strength: list[float] | None = None,
        guide_conditions: list[str] | None = None,
        guide_condition_scale: float = 1.0,
    ):
        super().__init__()
        defaults = get_preset("sd15-vae").config
        encoder_blocks = encoder_blocks if encoder_blocks is not None else defaults["encoder_blocks"]
        decoder_blocks = decoder_blocks if decoder_blocks is not None else defaults["decoder_blocks"]
        # The saved config names the groups it was built with (never null), so that it alone rebuilds this model.
        self.register_to_config(encoder_blocks=encoder_blocks, decoder_blocks=decoder_blocks)
        encoder_blocks = [_check_group(g, f"encoder_blocks[{i}]") for i, g in enumerate(encoder_blocks)]
        decoder_blocks = [_check_group(g, f"decoder_blocks[{i}]") for i, g in enumerate(decoder_blocks)]
        if len(encoder_blocks) < 2:
            raise InputError(f"encoder_blocks needs at least 2 groups, got {len(encoder_blocks)}")
        if len(decoder_blocks) != 2:
            raise InputError(
                f"decoder_blocks needs exactly 2 groups (before and after the 2x step), got {len(decoder_blocks)}"
            )
        if norm_type not in NORM_TYPES:
            raise InputError(f"norm_type must be one of {NORM_TYPES}, got {norm_type!r}")
        if image_normalization not in IMAGE_NORMALIZATIONS:
            raise InputError(f"image_normalization must be one of {IMAGE_NORMALIZATIONS}, got {image_normalization!r}")
        if min(in_channels, image_channels, patch_size) < 1 or noise_channels < 0:
            raise InputError("in_channels, image_channels and patch_size must be >= 1 and noise_channels >= 0")
        neighbourhood_offsets(neighbourhood_size)  # validates n
        ColorCorrection(mode=color_correction, detail_sigma=detail_sigma,  # validates the usage record
                        detail_strength=detail_strength)
        _check_latent_space(latent_space, in_channels)
        _check_guide_conditions(guide_conditions)
        if isinstance(guide_condition_scale, bool) or not isinstance(guide_condition_scale, (int, float)) or not (
                0 < guide_condition_scale < float("inf")):
            raise InputError(f"guide_condition_scale must be a positive number, got {guide_condition_scale!r}")

        guide_widths = [g["out_channels"] for g in encoder_blocks]
        self.encoder = UPLiFTEncoder(image_channels, encoder_blocks, norm_type, len(guide_conditions or ()))
        # block_0 sees the deepest encoder output, block_1 the second deepest (and the refiner the deepest again).
        self.decoder = UPLiFTDecoder(in_channels, (guide_widths[-1], guide_widths[-2]), noise_channels,
                                     decoder_blocks, norm_type)
        self.attender = LocalAttender(decoder_blocks[1]["out_channels"], neighbourhood_size)
        if refiner_blocks is not None:
            spec = _check_group(refiner_blocks, "refiner_blocks")
            self.refiner = BlockGroup(in_channels + guide_widths[-1] + noise_channels, spec["out_channels"],
                                      spec["num_blocks"], spec["num_convs"], norm_type)
            self.refiner_out = Conv2d(spec["out_channels"], in_channels, kernel_size=1)
        else:
            self.refiner = None
            self.refiner_out = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> UPLiFTModel:
        """A randomly initialised model of a named preset (``"sd15-vae"``, ``"dinov2-s14"``, ``"dinov3-splus16"``,
        ``"tiny-vae"``), with any constructor argument overridden."""
        return cls(**preset_config(name, **overrides))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> UPLiFTModel:
        """diffusers' ``ModelMixin.from_pretrained``, refusing damaged weights with a
        :class:`~uplift_diffusion.utils.errors.CheckpointError` naming the file: a local folder whose files cannot be
        read (truncated, corrupt, missing), and weights holding NaN / inf (a model that would return NaN).

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): a ``save_pretrained`` folder or a Hub repo id.
            **kwargs: diffusers' ``from_pretrained`` arguments (``subfolder``, ``dtype``, ``device_map``, ...).
        """
        folder = Path(os.fspath(pretrained_model_name_or_path)) / (kwargs.get("subfolder") or "")
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, ValueError, RuntimeError) as err:
            if not folder.is_dir() or isinstance(err, UserError):
                raise  # a Hub id (the caller words the network advice) or an error that already says what to do
            text = " ".join(str(err).split())
            reason = (f"a weights file is corrupt or truncated ({text[:200]})" if "Unable to load weights" in text
                      else text[:300])
            raise CheckpointError(f"cannot load the UPLiFT model in {folder}: {reason}") from None
        weights = sorted(folder.glob("diffusion_pytorch_model*.safetensors")) if folder.is_dir() else []
        check_finite(model.state_dict(), weights[0] if len(weights) == 1 else pretrained_model_name_or_path)
        return model

    @classmethod
    def from_reference_checkpoint(cls, path_or_repo_id: str, preset: str | None = None,
                                  dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                                  **overrides: Any) -> UPLiFTModel:
        """Load a published UPLiFT checkpoint (reference key layout), in eval mode.

        Args:
            path_or_repo_id (`str`): a ``.safetensors`` / ``.pth`` file, a folder with one, or a Hub repo id
                (e.g. ``"UPLiFT-upsampler/uplift_sd1.5vae"``).
            preset (`str`, *optional*): the checkpoint's preset; inferred from its key layout when ``None``.
            dtype (`torch.dtype`, *optional*), device (*optional*): where to put the loaded model.
            **overrides: config overrides for checkpoints of a customised preset.

        Raises:
            CheckpointError: see :func:`uplift_diffusion.reference.read_reference_checkpoint`.
        """
        state, preset = read_reference_checkpoint(path_or_repo_id, cls, preset, **overrides)
        with torch.device("meta"):
            model = cls.from_preset(preset, **overrides)
        # num_batches_tracked may be stored as float; every tensor takes the dtype of our parameter / buffer.
        ours = model.state_dict()
        model.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()}, strict=True, assign=True)
        model.eval()
        if dtype is not None or device is not None:
            model.to(device=device, dtype=dtype)
        return model

    # ------------------------------------------------------------------ image conventions
    @property
    def guide_channels(self) -> int:
        """Channels of the ``image`` argument: the RGB guide plus one per guide condition."""
        return self.config.image_channels + len(self.config.guide_conditions or ())

    def normalize_image(self, image: torch.Tensor, decoded: bool | torch.Tensor = False) -> torch.Tensor:
        """Map an RGB image in [0, 1] to the convention this model's ``image`` argument expects: normalised, and
        with one constant channel per guide condition (see ``guide_conditions``).

        Args:
            image: [B, 3, H, W] RGB in [0, 1], the whole guide (conditions read the whole image, so normalise
                before cutting tiles).
            decoded: whether the guide is a decode of the latents being upsampled (generation) rather than a photo;
                a bool, or one per batch item ([B] bool tensor). Read only by models with the ``"decoded"``
                condition.
        """
        rgb = imagenet_normalize(image) if self.config.image_normalization == "imagenet" else image
        conditions = self.config.guide_conditions
        if not conditions:
            return rgb
        b, _, h, w = image.shape
        values = []
        for name in conditions:
            if name == "decoded":
                value = torch.as_tensor(decoded, dtype=rgb.dtype, device=rgb.device).reshape(-1).expand(b)
            else:  # "sharpness": a property of the whole guide, so tiles of it are told the whole image's value
                value = sharpness(image).to(rgb.device, rgb.dtype)
            values.append(value)
        planes = torch.stack(values, dim=1) * self.config.guide_condition_scale
        planes = planes[:, :, None, None].expand(b, len(values), h, w)
        return torch.cat([rgb, planes], dim=1)  # [B, 3 + len(conditions), H, W]

    # ------------------------------------------------------------------ forward
    def _noise(self, like: torch.Tensor, generator) -> torch.Tensor | None:
        n = self.config.noise_channels
        if n == 0:
            return None
        b, _, h, w = like.shape
        if isinstance(generator, (list, tuple)) and len(generator) != b:
            raise InputError(f"got {len(generator)} generators for a batch of {b}: pass one per batch item, or one")
        # generator=None draws from the global RNG (torch.randn on like's device), as the reference does.
        noise = randn_tensor((b, n, h, w), generator=generator, device=like.device, dtype=like.dtype)
        return noise * self.config.noise_scale if self.config.noise_scale != 1.0 else noise

    def _concat(self, x: torch.Tensor, guide: torch.Tensor, generator) -> torch.Tensor:
        parts = [x, nearest_resize(guide, x.shape[-2:])]
        noise = self._noise(x, generator)
        if noise is not None:
            parts.append(noise)
        return concat_channels(parts, self)

    @apply_forward_hook  # model CPU offload moves the weights in for these entry points too, not only forward
    def encode_image(self, image: torch.Tensor, iterations: int | None = None) -> list[torch.Tensor]:
        """Run the dense encoder once; the result can be passed to :meth:`upscale_step` for every step.

        Args:
            image: [B, 3, H, W] guiding image in the model's convention.
            iterations: the number of steps the result will serve, when known. Steps read the deepest encoder map
                only at their own sizes (nearest sampling), so in eval mode its last block then computes only the
                pixels the finest of those steps reads; the result is the same up to float rounding, several times
                cheaper for that block. ``None``: every map at full resolution.
        """
        tokens = [s // self.config.patch_size for s in image.shape[-2:]]
        if self.config.patch_size == 14:
            # Patch-14 backbones: move the image to the 16-pixel token grid so that four 2x steps give 16x.
            h, w = image.shape[-2:]
            image = bilinear_resize(image, (h * 16 // 14, w * 16 // 14))
        stride = 1
        if iterations is not None:  # the last step, on features of tokens * 2**(iterations-1), reads the finest
            last_input = [t * 2 ** (iterations - 1) for t in tokens]
            stride = self.encoder.deepest_stride(image.shape[-2:], self._deepest_read_size(last_input))
        return self.encoder(image, stride)

    def _deepest_read_size(self, size: Sequence[int]) -> list[int]:
        """The size at which a step on ``size`` features reads the deepest encoder map: block_0 reads it at the
        step's input size, the refiner (when there is one) at its output size."""
        return [2 * s for s in size] if self.refiner is not None else list(size)

    @apply_forward_hook
    def upscale_step(self, features: torch.Tensor, encoded: Sequence[torch.Tensor], generator=None) -> torch.Tensor:
        """One 2x step: [B, C, h, w] -> [B, C, 2h, 2w], guided by the outputs of :meth:`encode_image`.

        Checks its inputs as :meth:`forward` does (rank, channels, batch, NaN / inf), raising ``InputError`` (a
        ValueError) naming the problem: a public entry point never turns bad features into an all-NaN output.
        """
        self.check_step_inputs(features, encoded)
        return self._upscale_step(features, encoded, generator)

    def check_step_inputs(self, features: torch.Tensor, encoded: Sequence[torch.Tensor]) -> None:
        """The cheap checks of :meth:`upscale_step` (one pass over the features for NaN / inf)."""
        if not isinstance(features, torch.Tensor) or features.ndim != 4:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise InputError(f"features must be a 4-D tensor [B, C, h, w], got {got}")
        if features.shape[1] != self.config.in_channels:
            raise InputError(f"features have {features.shape[1]} channels but this UPLiFT model upsamples "
                             f"{self.config.in_channels}-channel features")
        if not isinstance(encoded, (list, tuple)) or len(encoded) < 2 or any(
                not isinstance(e, torch.Tensor) or e.ndim != 4 or e.shape[0] != features.shape[0] for e in encoded):
            raise InputError("encoded must be the list returned by encode_image for the same batch (>= 2 tensors "
                             "[B, C_i, H, W])")
        deepest, full = encoded[-1].shape[-2:], encoded[-2].shape[-2:]
        finest = self._deepest_read_size(features.shape[-2:])
        if deepest != full and any(d < f or d % f for d, f in zip(deepest, finest, strict=True)):
            raise InputError(f"encoded was made by encode_image(..., iterations=N) for fewer steps: its deepest map "
                             f"({deepest[0]}x{deepest[1]}) cannot serve a step on {tuple(features.shape[-2:])} "
                             f"features; encode again with the right iterations (or None)")
        if not torch.isfinite(features).all():
            raise InputError("features contain NaN or inf values")

    def _upscale_step(self, features: torch.Tensor, encoded: Sequence[torch.Tensor], generator=None,
                      output_size: Sequence[int] | None = None) -> torch.Tensor:
        """One 2x step; ``output_size``: then resized (antialiased bilinear), fused into the attender when the
        attender's output is the step's output (no refiner)."""
        decoder = self.decoder
        x = decoder.block_0(self._concat(features, encoded[-1], generator))  # [B, D0, h, w]
        x = decoder.up_1(x)  # [B, D0, 2h, 2w]
        guide = decoder.block_1(self._concat(x, encoded[-2], generator))  # [B, D1, 2h, 2w]
        if self.refiner is None:
            return self.attender(guide, features, output_size)  # [B, C, 2h, 2w] or output_size
        out = self.attender(guide, features)  # [B, C, 2h, 2w]
        out = self.refiner_out(self.refiner(self._concat(out, encoded[-1], generator)))
        out = out.contiguous()  # the blocks may run channels-last (blocks.channels_last_inference)
        return out if output_size is None else bilinear_resize(out, output_size)

    def check_inputs(self, image: torch.Tensor, features: torch.Tensor, iterations: int, output_size) -> None:
        """Validate the forward arguments; raises ValueError / TypeError naming the problem."""
        cfg = self.config
        for name, t in (("image", image), ("features", features)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.ndim != 4:
                raise InputError(f"{name} must be 4-D [B, C, H, W], got shape {tuple(t.shape)}")
        if features.shape[1] != cfg.in_channels:
            raise InputError(
                f"features have {features.shape[1]} channels but this UPLiFT model upsamples {cfg.in_channels}-channel "
                f"features (check that the model matches your backbone)"
            )
        if image.shape[1] != self.guide_channels:
            told = (f" plus the guide conditions {', '.join(cfg.guide_conditions)}: pass the image through "
                    f"normalize_image") if cfg.guide_conditions else ""
            raise InputError(f"image has {image.shape[1]} channels, expected {self.guide_channels} (RGB{told})")
        if image.shape[0] != features.shape[0]:
            raise InputError(f"image batch size {image.shape[0]} != features batch size {features.shape[0]}")
        (h, w), (H, W), p = features.shape[-2:], image.shape[-2:], cfg.patch_size
        if (H, W) != (h * p, w * p):
            raise InputError(
                f"image size {H}x{W} does not match features {h}x{w} with patch size {p}: the image must be "
                f"{h * p}x{w * p} (features x {p})"
            )
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise InputError(f"iterations must be an integer >= 1, got {iterations!r}")
        if output_size is not None:
            size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
            if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
                raise InputError(f"output_size must be None, a positive int or (height, width), got {output_size!r}")
        if not torch.isfinite(features).all():
            raise InputError("features contain NaN or inf values")
        if not torch.isfinite(image).all():
            raise InputError("image contains NaN or inf values")

    def forward(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        iterations: int = 1,
        output_size: int | Sequence[int] | None = None,
        return_all_steps: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Upsample ``features`` by ``2**iterations`` (then optionally resize to ``output_size``).

        Args:
            image: [B, 3, H, W] guiding image in the model's convention (:meth:`normalize_image`), with
                ``H = h * patch_size`` and ``W = w * patch_size``.
            features: [B, C, h, w] backbone features (raw, unscaled latents for VAE presets).
            iterations: number of 2x steps (>= 1).
            output_size: optional final bilinear (antialiased) resize of the last step's output, ``int`` or ``(H, W)``.
            return_all_steps: return the list of every step's output instead of the last one.
            generator: ``torch.Generator`` (or one per batch item) for the noise channels; ``None`` uses the
                global RNG in the reference order, so ``torch.manual_seed`` reproduces the published code.

        Returns:
            [B, C, h * 2**iterations, w * 2**iterations] (or ``output_size``), or the list of all steps.
        """
        self.check_inputs(image, features, iterations, output_size)
        dtype = self.dtype
        image, features = image.to(dtype), features.to(dtype)
        encoded = self.encode_image(image, iterations)[-2:]  # the steps read only these: the rest is freed now
        if output_size is not None:
            output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        steps = []
        x = features
        for i in range(iterations):
            last = i == iterations - 1
            x = self._upscale_step(x, encoded, generator, output_size if last else None)  # inputs checked above
            if return_all_steps:
                steps.append(x)
        return steps if return_all_steps else x

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``torch.compile`` every part in place (encoder, decoder groups, up-step, attender, refiner), so that
        :meth:`forward`, :meth:`encode_image` and :meth:`upscale_step` (what the pipelines call) all run compiled.

        Arguments as ``torch.nn.Module.compile``. The default path needs none of this: on CPU the eager
        channels-last path is as fast (see docs/speed.md); the flag is for GPUs and experiments.
        """
        parts = [self.encoder, self.decoder.block_0, self.decoder.up_1, self.decoder.block_1, self.attender]
        parts += [m for m in (self.refiner, self.refiner_out) if m is not None]
        for part in parts:
            part.compile(*args, **kwargs)

    @property
    def num_parameters_by_part(self) -> dict:
        parts = {"encoder": self.encoder, "decoder": self.decoder, "attender": self.attender}
        if self.refiner is not None:
            parts.update(refiner=self.refiner, refiner_out=self.refiner_out)
        return {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}

    @staticmethod
    def iterations_for_scale(scale: int) -> int:
        """log2(scale) for a power-of-two scale >= 2, or a ValueError."""
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2 or scale & (scale - 1):
            raise InputError(f"scale must be a power of two >= 2 (2, 4, 8, ...), got {scale!r}")
        return int(math.log2(scale))
