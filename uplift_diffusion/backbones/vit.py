"""``ViTBackbone``: dense patch-token features of any timm Vision Transformer (DINOv2, DINOv3, ...).

    >>> vit = ViTBackbone("vit_small_patch14_dinov2", pretrained=False)  # or a timm module
    >>> vit.patch_size, vit.embed_dim
    (14, 384)
    >>> vit(images_imagenet_normalised).shape  # [B, 3, 224, 224] -> [B, 384, 16, 16]

The features are the last block's patch tokens after the model's final norm, as a [B, C, H / p, W / p] map; class
and register tokens are dropped. The input convention is the model's own (ImageNet mean / std for DINO).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.errors import InputError, WeightsUnavailableError

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _import_timm():
    try:
        import timm
    except ImportError:
        raise ImportError("ViT backbones need timm: pip install 'uplift-diffusion[features]'") from None
    return timm


class ViTBackbone(nn.Module):
    """A frozen timm ViT that returns its patch tokens as a feature map.

    Args:
        name_or_module (`str` or `nn.Module`): a timm model name (``"vit_small_patch14_dinov2.lvd142m"``,
            ``"vit_small_plus_patch16_dinov3.lvd1689m"``, any timm ViT) or an already built timm ViT. Names are
            created with ``dynamic_img_size=True`` so that any multiple of the patch size works; a module built
            without it only accepts its fixed input size.
        pretrained (`bool`, defaults to `False`): for a name, download timm's pretrained weights (needs the Hugging
            Face Hub; offline, use :meth:`from_pretrained` with a local ``weights`` file instead).
        **timm_kwargs: extra ``timm.create_model`` arguments for a name (e.g. ``depth=1`` for a tiny test model).

    Attributes:
        patch_size (`int`): pixels per token side, read from the model.
        embed_dim (`int`): feature channels C, read from the model.
    """

    def __init__(self, name_or_module: str | nn.Module, pretrained: bool = False, **timm_kwargs: Any):
        super().__init__()
        if isinstance(name_or_module, str):
            timm = _import_timm()
            timm_kwargs = {"dynamic_img_size": True, "num_classes": 0, **timm_kwargs}
            try:
                model = timm.create_model(name_or_module, pretrained=pretrained, **timm_kwargs)
            except RuntimeError as err:  # unknown model name
                raise InputError(f"cannot create timm model {name_or_module!r}: {err}") from None
            except Exception as err:
                if not pretrained:
                    raise
                raise WeightsUnavailableError(
                    f"could not download the pretrained weights of timm model {name_or_module!r} "
                    f"({type(err).__name__}). Offline, download them elsewhere (Hub repo "
                    f"'timm/{name_or_module}', file model.safetensors)",
                    f"use ViTBackbone.from_pretrained({name_or_module!r}, weights='path/to/model.safetensors')"
                ) from None
        elif isinstance(name_or_module, nn.Module):
            model = name_or_module
        else:
            raise TypeError(f"name_or_module must be a timm model name or an nn.Module, got "
                            f"{type(name_or_module).__name__}")
        missing = [a for a in ("patch_embed", "forward_features", "embed_dim") if not hasattr(model, a)]
        if missing:
            raise TypeError(f"{type(model).__name__} is not a timm Vision Transformer (it has no {', '.join(missing)})")
        patch = tuple(model.patch_embed.patch_size)
        if patch[0] != patch[1]:
            raise InputError(f"only square patches are supported, the model has patch size {patch}")
        self.model = model.eval().requires_grad_(False)
        self.patch_size = int(patch[0])
        self.embed_dim = int(model.embed_dim)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        # Without dynamic_img_size timm's patch embedding only takes the size the model was built for.
        dynamic = getattr(model, "dynamic_img_size", False) or not getattr(model.patch_embed, "strict_img_size", True)
        self.fixed_img_size = None if dynamic else tuple(model.patch_embed.img_size)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, weights: str | os.PathLike | None = None,
                        **timm_kwargs: Any) -> ViTBackbone:
        """A backbone with pretrained weights, from the Hub or from local files.

        Args:
            name_or_path: a timm model name (``"vit_small_patch14_dinov2.lvd142m"``) or a local folder holding a
                timm Hub snapshot (``config.json`` with ``"architecture"`` and ``model.safetensors``).
            weights: a local ``.safetensors`` / ``.pth`` / ``.bin`` state dict (or a folder with one) for the named
                architecture; ``None`` downloads timm's weights for a name.
            **timm_kwargs: extra ``timm.create_model`` arguments.

        Raises:
            OSError: the weights cannot be downloaded (offline); the message says which file to supply.
            ValueError: the weights do not fit the architecture.
        """
        path = Path(name_or_path)
        if path.is_dir():
            config_file = path / "config.json"
            if not config_file.is_file():
                raise FileNotFoundError(f"{path} has no config.json: pass a timm model name and weights=FILE instead")
            config = json.loads(config_file.read_text())
            name = config.get("architecture")
            if not name:
                raise InputError(f"{config_file} has no 'architecture' entry (not a timm model folder)")
            weights = path if weights is None else weights
            timm_kwargs = {**config.get("model_args", {}), **timm_kwargs}  # as timm's push_to_hub records them
        else:
            name = str(name_or_path)
        if weights is None:
            return cls(name, pretrained=True, **timm_kwargs)
        backbone = cls(name, pretrained=False, **timm_kwargs)
        backbone.load_weights(weights)
        return backbone

    def load_weights(self, weights: str | os.PathLike) -> None:
        """Load a local state dict (timm layout, or one that timm's checkpoint filter of this model converts)."""
        from ..reference import read_state_dict

        path = Path(weights)
        if path.is_dir():
            found = [path / f for f in _WEIGHT_FILES if (path / f).is_file()]
            if not found:
                raise FileNotFoundError(f"no weights file ({', '.join(_WEIGHT_FILES)}) in {path}")
            path = found[0]
        state = read_state_dict(path)
        # timm models ship a filter that converts original (e.g. Meta) checkpoints and resamples position embeddings.
        filter_fn = getattr(sys.modules.get(type(self.model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, self.model)
        state = {k: v for k, v in state.items() if not k.startswith("head.")}  # classifier heads are not used
        result = self.model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("head.")]
        if missing or result.unexpected_keys:
            raise InputError(f"weights {path} do not fit {type(self.model).__name__}: missing keys "
                             f"{missing[:5]}, unexpected keys {result.unexpected_keys[:5]}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] images in the model's normalisation -> [B, embed_dim, H / patch, W / patch] features."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise InputError(f"images must be a 4-D tensor [B, 3, H, W], got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        (height, width), p = images.shape[-2:], self.patch_size
        if height % p or width % p:
            raise InputError(f"image size {height}x{width} is not a multiple of the patch size {p}")
        if self.fixed_img_size is not None and (height, width) != self.fixed_img_size:
            raise InputError(f"this ViT was built for {self.fixed_img_size[0]}x{self.fixed_img_size[1]} images only, "
                             f"got {height}x{width}; create it with timm's dynamic_img_size=True for other sizes")
        tokens = self.model.forward_features(images)  # [B, prefix + h * w, C]
        h, w = height // p, width // p
        if tokens.ndim != 3 or tokens.shape[1] != self.num_prefix_tokens + h * w:
            raise InputError(f"{type(self.model).__name__}.forward_features returned shape {tuple(tokens.shape)}, "
                             f"expected [B, {self.num_prefix_tokens} + {h}*{w}, C]")
        patches = tokens[:, self.num_prefix_tokens:]  # [B, h * w, C]
        return patches.transpose(1, 2).reshape(images.shape[0], -1, h, w)  # [B, C, h, w]
