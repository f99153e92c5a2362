"""Training configuration: nested dataclasses read from a JSON, YAML or TOML file.

Every section rejects unknown keys with a message naming the key and the section, so that a typo in a config file
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.io import require_path

BACKBONE_TYPES = ("taef2", "vae", "vit")
SOURCE_TYPES = ("folder", "hf", "webdataset")
DOWNSCALE_KERNELS = ("bilinear", "bicubic", "bilinear-aliased", "bicubic-jpeg")
GUIDE_SOURCES = ("photo", "decoded", "mixed")
PIXEL_DEPTH_SCHEDULES = ("all", "cycle")
PIXEL_LOSSES = ("l1", "l2", "charbonnier")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class ModelConfig:
    """The UPLiFT model to train.

    Attributes:
        preset: name of a preset (``"tiny-vae"``, ``"sd15-vae"``, ``"dinov2-s14"``, ...) giving the base config.
        overrides: constructor arguments of ``UPLiFTModel`` that replace the preset's (e.g. ``in_channels``). With
            ``init_from`` only what grows the initial model: ``{"refiner_blocks": {"num_blocks": N}}`` (more blocks,
            starting as the identity) and ``{"guide_conditions": [...]}`` (more conditions, starting ignored); see
            :func:`uplift_diffusion.training.init.grow_model`.
        init_from: optional folder written by ``save_pretrained`` to start from instead of a random init.
        identity_refiner_init: start the refiner as the identity on the Local Attender output (see
            :func:`uplift_diffusion.training.init.identity_refiner_init`); ignored with ``init_from``.
    """

    preset: str = "tiny-vae"
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    identity_refiner_init: bool = False


@dataclass
class BackboneConfig:
    """The frozen feature backbone whose features UPLiFT learns to upsample.

    Attributes:
        type: ``"taef2"`` (tiny autoencoder folder), ``"vae"`` (a diffusers ``AutoencoderKL`` / ``AutoencoderTiny``)
            or ``"vit"`` (a timm DINO model through ``uplift_diffusion.backbones.vit.ViTBackbone``).
        path: local folder or Hub id of the backbone weights; for ``"vit"`` a timm model name
            (``"vit_small_patch14_dinov2.lvd142m"``) or a local timm snapshot folder.
        subfolder: subfolder of ``path`` (e.g. ``"vae"`` inside a Stable Diffusion repo).
        weights: ``"vit"`` only: a local weights file for the named timm model (offline use).
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for the backbone's weights.
    """

    type: str = "taef2"
    path: str = ""
    subfolder: str | None = None
    weights: str | None = None
    dtype: str = "float32"


@dataclass
class DataSource:
    """One source of training images.

    Attributes:
        type: ``"folder"`` (images found recursively), ``"hf"`` (a Hugging Face ``datasets`` dataset: a saved folder
            or a Hub/builder name) or ``"webdataset"`` (``.tar`` shards: a folder, a glob or one file).
        path: folder, dataset name or shard pattern.
        split: dataset split (``"hf"`` only).
        image_column: column holding the images (``"hf"`` only).
    """

    type: str = "folder"
    path: str = ""
    split: str = "train"
    image_column: str = "image"


@dataclass
class DataConfig:
    """Images and crops.

    Attributes:
        sources: the image sources, concatenated.
        crop_size: side of the square training crop (the high-resolution image ``I``); a multiple of
            ``patch_size * 2**max(depths)``.
        min_crop_fraction: random square crops take between this fraction and all of the image's short side, then
            are resized to ``crop_size`` (1.0 = crops at the image's full short side).
        hflip: randomly mirror crops.
        views_per_image: distinct random crops per image; a crop is fixed per (seed, image, view) so that the
            feature cache can serve it in every epoch.
        cache_dir: folder of the feature cache (safetensors shards); ``None`` disables caching.
        num_workers: DataLoader worker processes for decoding and cropping images.
        downscale: kernels that make the lower pyramid levels (the low-resolution inputs); each view draws one,
            fixed per view: ``"bilinear"`` / ``"bicubic"`` (antialiased), ``"bilinear-aliased"`` (no antialiasing)
            and ``"bicubic-jpeg"`` (bicubic, then each low-res level JPEG-compressed at a quality drawn per view in
            [60, 90]). Real low-resolution photos come from no single known kernel, so training on several keeps any
            one from being a special case.
        predownscale: shrink every photo by this factor (antialiased, before cropping) first; ``0.5`` halves it,
            which averages away the 8x8 JPEG blocks of JPEG sources so that the targets carry none. 1 = as stored.
    """

    sources: list[DataSource] = field(default_factory=list)
    crop_size: int = 256
    min_crop_fraction: float = 0.6
    hflip: bool = True
    views_per_image: int = 4
    cache_dir: str | None = None
    num_workers: int = 0
    downscale: list[str] = field(default_factory=lambda: ["bilinear"])
    predownscale: float = 1.0


@dataclass
class LossConfig:
    """Paper eq. 1-5.

    Attributes:
        depths: training depths ``D``; depth d feeds features of the image at ``1/2**d`` and takes an L2 term after
            each of the d steps.
        noise_sigma: standard deviation of the Gaussian augmentation added to a copy of the input features.
        latent_weight: weight of the latent MSE terms (1 = the paper).
        pixel_weight: weight of the decoder-aware pixel term (VAE backbones): the frozen decoder turns the last
            step of each depth into pixels, compared with the full-resolution crop. 0 = the paper's latent-only loss.
        pixel_loss: distance of the pixel term: ``"l1"``, ``"l2"`` or ``"charbonnier"``.
        edge_weight: weight of an L1 term on image gradients of the decoded pixels (needs ``pixel_weight > 0``).
        pixel_depths: depths whose last step is decoded (``None``: all of ``depths``).
        pixel_window: decode one random window of this many latents per side per batch instead of the whole crop
            (``None``); the decoder's backward pass dominates the cost of a step otherwise.
        pixel_margin: latents at each inner side of the window that are decoded but not compared.
        pixel_color_correction: ``"none"`` or ``"detail"``: the pixel term compares the output of
            ``ColorCorrection(mode="detail")`` (bicubic input below ``detail_sigma * scale``, decoded detail above),
            i.e. what the pipeline returns with that mode; the model then learns only the missing detail.
        detail_sigma: sigma of that correction, in units of the upscaling factor.
        pixel_items: decode the window of only this many items of each batch (``None``: all); the decoder's forward
            and backward pass is most of a step's cost.
        pixel_depth_schedule: ``"all"`` takes the pixel term at every pixel depth in every step; ``"cycle"`` at one
            of them per step, in turn (half the decoder work with two pixel depths).
        grid_weight: weight of the latent-grid term on the decoded window: the excess of the window's luma spectrum
            magnitude over the target's on the harmonics of the ``patch_size`` grid (both axes), where an
            imperfectly upsampled latent map shows as a mesh that an L1 on pixels barely charges.
        guide: the image that guides the model: ``"photo"`` (the low-res crop, super-resolution of a photo),
            ``"decoded"`` (the backbone's decode of the low-res features, what a generation pipeline has) or
            ``"mixed"`` (each item draws one of the two per step).
    """

    depths: list[int] = field(default_factory=lambda: [1, 2, 3])
    noise_sigma: float = 0.0
    latent_weight: float = 1.0
    pixel_weight: float = 0.0
    pixel_loss: str = "l1"
    edge_weight: float = 0.0
    pixel_depths: list[int] | None = None
    pixel_window: int | None = None
    pixel_margin: int = 0
    pixel_color_correction: str = "none"
    detail_sigma: float = 0.5
    pixel_items: int | None = None
    pixel_depth_schedule: str = "all"
    grid_weight: float = 0.0
    guide: str = "photo"


@dataclass
class OptimConfig:
    """Adam and the learning-rate schedule (the paper: Adam, constant lr 1e-3).

    Attributes:
        lr: learning rate.
        betas: Adam betas.
        weight_decay: Adam weight decay.
        scheduler: a diffusers scheduler name: ``"constant"``, ``"constant_with_warmup"``, ``"cosine"``, ``"linear"``;
            with ``max_minutes`` and no ``max_steps``, ``"cosine"`` / ``"linear"`` decay over the time budget.
        warmup_steps: warmup steps for the schedulers that use them.
        max_grad_norm: clip the gradient norm to this value (``None`` = no clipping).
    """

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    scheduler: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float | None = None


@dataclass
class TrainConfig:
    """Everything a training run needs; see the section classes for the fields.

    Attributes:
        output_dir: where checkpoints, logs, preview grids and the final model go.
        max_steps: stop after this many optimizer steps (``None``: only ``max_minutes`` limits the run).
        max_minutes: stop after this much wall-clock time, feature caching included (``None``: no limit).
        batch_size: the *global* batch: views per optimizer step, all processes together. On N processes (``accelerate
            launch --num_processes N``) each takes ``batch_size / N`` of them (N must divide it) and the gradients are
            averaged, so a config trains the same model (within float tolerance) on any number of processes and a run
            resumes under another number; scale ``batch_size`` (and ``optim.lr``) yourself for a bigger batch.
        seed: seed of the crops, the epoch order and the noise (augmentation, noise channels: drawn per step and
            position in the global batch, so they do not depend on the number of processes).
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (passed to accelerate).
        checkpoint_every: write a checkpoint every this many steps (and at the end).
        keep_last: how many checkpoints to keep.
        log_every: append to the CSV loss log every this many steps.
        preview_images: images in the before/after grid saved with each checkpoint (0 = no grid).
        description: what the recipe is for (free text, recorded with the run).
    """

    output_dir: str = "uplift-training"
    model: ModelConfig = field(default_factory=ModelConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int | None = 1000
    max_minutes: float | None = None
    batch_size: int = 8
    seed: int = 0
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    preview_images: int = 4
    description: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        if self.backbone.type not in BACKBONE_TYPES:
            raise ValueError(f"backbone.type must be one of {BACKBONE_TYPES}, got {self.backbone.type!r}")
        for i, s in enumerate(self.data.sources):
            if s.type not in SOURCE_TYPES:
                raise ValueError(f"data.sources[{i}].type must be one of {SOURCE_TYPES}, got {s.type!r}")
        if not self.loss.depths or any(not isinstance(d, int) or d < 1 for d in self.loss.depths):
            raise ValueError(f"loss.depths must be a non-empty list of integers >= 1, got {self.loss.depths!r}")
        if self.loss.noise_sigma < 0:
            raise ValueError(f"loss.noise_sigma must be >= 0, got {self.loss.noise_sigma}")
        for name in ("latent_weight", "pixel_weight", "edge_weight", "grid_weight"):
            if getattr(self.loss, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self.loss, name)}")
        if self.loss.latent_weight == 0 and self.loss.pixel_weight == 0:
            raise ValueError("loss.latent_weight and loss.pixel_weight are both 0: nothing to train")
        if self.loss.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"loss.pixel_loss must be one of {PIXEL_LOSSES}, got {self.loss.pixel_loss!r}")
        if self.loss.edge_weight > 0 and self.loss.pixel_weight == 0:
            raise ValueError("loss.edge_weight needs loss.pixel_weight > 0 (the edge term is on decoded pixels)")
        if self.loss.pixel_depths is not None and not set(self.loss.pixel_depths) <= set(self.loss.depths):
            raise ValueError(f"loss.pixel_depths {self.loss.pixel_depths} must be a subset of loss.depths "
                             f"{self.loss.depths}")
        if self.loss.pixel_window is not None and self.loss.pixel_window <= 2 * self.loss.pixel_margin:
            raise ValueError(f"loss.pixel_window ({self.loss.pixel_window}) must exceed twice loss.pixel_margin "
                             f"({self.loss.pixel_margin})")
        if self.loss.grid_weight > 0 and self.loss.pixel_weight == 0:
            raise ValueError("loss.grid_weight needs loss.pixel_weight > 0 (the grid term is on decoded pixels)")
        if self.loss.pixel_items is not None and (isinstance(self.loss.pixel_items, bool)
                                                  or not isinstance(self.loss.pixel_items, int)
                                                  or self.loss.pixel_items < 1):
            raise ValueError(f"loss.pixel_items must be an integer >= 1 or null, got {self.loss.pixel_items!r}")
        if self.loss.pixel_depth_schedule not in PIXEL_DEPTH_SCHEDULES:
            raise ValueError(f"loss.pixel_depth_schedule must be one of {PIXEL_DEPTH_SCHEDULES}, got "
                             f"{self.loss.pixel_depth_schedule!r}")
        if self.loss.guide not in GUIDE_SOURCES:
            raise ValueError(f"loss.guide must be one of {GUIDE_SOURCES}, got {self.loss.guide!r}")
        if not 0 < self.data.predownscale <= 1:
            raise ValueError(f"data.predownscale must be in (0, 1], got {self.data.predownscale!r}")
        if self.loss.pixel_color_correction not in ("none", "detail"):
            raise ValueError(f"loss.pixel_color_correction must be 'none' or 'detail', got "
                             f"{self.loss.pixel_color_correction!r}")
        if self.loss.detail_sigma <= 0:
            raise ValueError(f"loss.detail_sigma must be > 0, got {self.loss.detail_sigma}")
        if self.loss.pixel_margin < 0:
            raise ValueError(f"loss.pixel_margin must be >= 0, got {self.loss.pixel_margin}")
        bad = [k for k in self.data.downscale if k not in DOWNSCALE_KERNELS]
        if not self.data.downscale or bad:
            raise ValueError(f"data.downscale must be a non-empty list of {DOWNSCALE_KERNELS}, got "
                             f"{self.data.downscale!r}")
        if self.optim.scheduler not in SCHEDULERS:
            raise ValueError(f"optim.scheduler must be one of {SCHEDULERS}, got {self.optim.scheduler!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("set max_steps, max_minutes or both: the run needs a stopping rule")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ValueError(f"max_steps must be an integer >= 1 (or null for a time budget only), got "
                             f"{self.max_steps!r}: a run without a step would save the random initialisation")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0 (or null for a step budget only), got {self.max_minutes!r}")
        for name in ("batch_size", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.data.views_per_image < 1 or not 0 < self.data.min_crop_fraction <= 1:
            raise ValueError("data.views_per_image must be >= 1 and data.min_crop_fraction in (0, 1]")
        _check_ranges(self)

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a config from plain nested dicts (as read from a file); unknown keys raise ValueError."""
        return _build(cls, data, "config")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a ``.json``, ``.yaml`` / ``.yml`` or ``.toml`` config file (see :func:`read_config_file`)."""
        data = read_config_file(path)
        try:
            return cls.from_dict(data)
        except ValueError as err:  # a bad key or value: say in which file
            raise ValueError(f"config file {path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse(path: Path) -> dict[str, Any]:
    require_path(path, "file", "config file", f"config file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml", ".toml"):
        raise ValueError(f"config file {path} must end in .json, .yaml, .yml or .toml, got {suffix!r}")
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except Exception as err:  # parser errors of the three formats (JSON's is a ValueError), undecodable bytes
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"could not parse config file {path}: {reason}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def merge_config(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied: mappings merge key by key, every other value (lists included) replaces."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge_config(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The settings of a config file as plain nested dicts. A *recipe* file names the file it builds on and what it
    changes, ``{"extends": "baseline.json", "changes": {"loss": {"grid_weight": 2.0}}, "description": ...}`` (the
    path relative to the recipe's folder, chains allowed), so that a variant states one idea and nothing else."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ValueError(f"config file {path} extends itself (through {' -> '.join(p.name for p in _seen)})")
    data = _parse(path)
    if "extends" not in data:
        if "changes" in data:
            raise ValueError(f"config file {path} has 'changes' but no 'extends' naming the config they change")
        return data
    unknown = sorted(set(data) - {"extends", "changes", "description"})
    if unknown:
        raise ValueError(f"config file {path} extends {data['extends']!r}: only 'changes' and 'description' may "
                         f"stand beside 'extends', got {unknown}")
    base = read_config_file(path.parent / str(data["extends"]), (*_seen, path.resolve()))
    changes = data.get("changes", {})
    if not isinstance(changes, dict):
        raise ValueError(f"config file {path}: 'changes' must be a mapping, got {type(changes).__name__}")
    merged = merge_config(base, changes)
    if "description" in data:
        merged["description"] = data["description"]
    return merged


_NESTED = {"model": "ModelConfig", "backbone": "BackboneConfig", "data": "DataConfig", "loss": "LossConfig",
           "optim": "OptimConfig"}


def _describe(hint: Any) -> str | None:
    """The expected type in words (``None``: no check, e.g. ``Any``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(i for i in inner if i) + (" or null" if type(None) in args else "")
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(origin or hint)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as read from a JSON / YAML / TOML file) has the type ``hint``, elements included. bool is not
    a number here (``True`` as a batch size is a slip), an integer is a float (``lr: 1`` is fine)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return True


def _list_element(hint: Any) -> Any:
    """The element type of ``list[X]`` (or ``list[X] | None``) in ``hint``; ``None`` when it holds no list."""
    for h in (hint, *typing.get_args(hint)):
        if typing.get_origin(h) is list:
            return typing.get_args(h)[0]
    return None


def _check_type(value: Any, hint: Any, key: str) -> None:
    """Raise ValueError naming the key, the expected type and the value when ``value`` does not have type ``hint``;
    list elements are checked one by one (``loss.depths[1]``)."""
    if not _fits(value, hint):
        note = ""
        if isinstance(value, str) and _fits(1.5 if _fits(1.5, hint) else 1, hint):
            try:
                float(value)
                yaml = "e" in value.lower() and "." not in value  # YAML 1.1 reads 1e-3 as text, 1.0e-3 as a number
                note = " (YAML reads 1e-3 as text: write 1.0e-3)" if yaml else " (write the number without quotes)"
            except ValueError:
                pass
        raise ValueError(f"{key} must be {_describe(hint)}, got {value!r} ({type(value).__name__}){note}")
    element = _list_element(hint)
    if isinstance(value, list) and element is not None and not dataclasses.is_dataclass(element):
        for i, item in enumerate(value):
            _check_type(item, element, f"{key}[{i}]")


def _build(cls, data: Any, where: str, key: str = ""):
    """``cls`` from a mapping read from a file: unknown keys and values of the wrong type raise ValueError naming the
    key (``where`` names the section in the unknown-key message, ``key`` is the dotted prefix of its keys)."""
    if not isinstance(data, dict):
        raise ValueError(f"{key.rstrip('.') or where} must be a mapping, got {data!r} ({type(data).__name__})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        if cls is TrainConfig and name in _NESTED:
            value = _build(globals()[_NESTED[name]], value, f"{where}.{name}", f"{key}{name}.")
        elif cls is DataConfig and name == "sources":
            _check_type(value, list, f"{key}sources")
            value = [_build(DataSource, s, f"{where}.sources[{i}]", f"{key}sources[{i}].")
                     for i, s in enumerate(value)]
        else:
            _check_type(value, hints[name], f"{key}{name}")
        kwargs[name] = value
    return cls(**kwargs)


# Every number of a config within its range (NaN and infinity refused): values that would fail deep in torch after
# the weights load, or train on something else than meant. ``None`` (optional settings) is left to validate().
_CROP_SIZE_LIMIT = 2048  # a training crop's side: beyond it one step's activations outgrow any machine's memory
_RANGES = (  # (dotted key, low, high, low inclusive)
    ("max_minutes", 0, 60 * 24 * 365, False), ("seed", 0, 2**32 - 1, True), ("preview_images", 0, 64, True),
    ("batch_size", 1, 4096, True), ("checkpoint_every", 1, 10**9, True), ("keep_last", 1, 10**6, True),
    ("log_every", 1, 10**9, True),
    ("data.crop_size", 16, _CROP_SIZE_LIMIT, True), ("data.views_per_image", 1, 10**4, True),
    ("data.num_workers", 0, 256, True),
    ("loss.noise_sigma", 0, 1e3, True), ("loss.latent_weight", 0, 1e6, True), ("loss.pixel_weight", 0, 1e6, True),
    ("loss.edge_weight", 0, 1e6, True), ("loss.pixel_window", 1, _CROP_SIZE_LIMIT, True),
    ("loss.pixel_margin", 0, _CROP_SIZE_LIMIT, True), ("loss.detail_sigma", 0, 1e3, False),
    ("optim.lr", 0, 10, False), ("optim.weight_decay", 0, 10, True), ("optim.warmup_steps", 0, 10**9, True),
    ("optim.max_grad_norm", 0, 1e9, False),
)


def _check_ranges(config: "TrainConfig") -> None:
    import math

    for key, low, high, inclusive in _RANGES:
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        below = value < low if inclusive else value <= low
        if not math.isfinite(value) or below or value > high:
            extra = (f" (one training step at {value}x{value} px needs far more memory than a machine has; the "
                     f"photos are resized to it)" if key == "data.crop_size" and value > high else "")
            raise ValueError(f"{key} must be in {'[' if inclusive else '('}{low}, {high}], got {value}{extra}")
    for i, beta in enumerate(config.optim.betas):
        if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
            raise ValueError(f"optim.betas[{i}] must be in [0, 1), got {beta!r}")
    if len(config.optim.betas) != 2:
        raise ValueError(f"optim.betas must be two numbers, got {config.optim.betas!r}")
