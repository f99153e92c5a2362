"""The UPLiFT trainer: accelerate-based, resumable, with cached backbone features.

One code path runs on one CPU, one GPU, or many GPUs / nodes under ``accelerate launch``; mixed precision comes from
accelerate. Each step draws a batch of fixed random crops (views), gets the backbone features of every pyramid level
(from the feature cache when possible), and minimises the multi-depth, multi-step loss (paper eq. 1-5).

On N processes ``batch_size`` stays the *global* batch: step s trains on the same views with the same random noise
whatever N is (the epoch order is seeded by (seed, epoch); every item's noise by (seed, step, position in the global
batch)); each process takes its contiguous 1/N of the batch and DDP averages the gradients, so N processes reproduce
one process within float tolerance, and a run resumes under another process count. The main process alone writes
checkpoints, logs and previews; every process stops at the same step (they share the elapsed time and the loss after
every step).

Outputs in ``config.output_dir``: ``checkpoints/checkpoint-<step>/`` (atomic, last K kept), ``loss_log.csv``
(TensorBoard events too when ``tensorboard`` is installed), ``previews/step-<step>.png`` (before/after grids) and
``model/`` (the final ``save_pretrained`` export, loadable with ``UPLiFTModel.from_pretrained``).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..backbones.vae import latent_space_record
from ..color import ColorCorrection
from ..model import UPLiFTModel
from ..utils.errors import InputError
from ..utils.image_ops import float_to_uint8
from ..utils.io import write_folder_atomic, write_json_atomic
from .backbones import FeatureBackbone, load_backbone
from .cache import FeatureCache, cache_fingerprint
from .checkpoints import CheckpointManager, capture_rng_state, restore_rng_state
from .config import TrainConfig
from .data import ViewDataset, collate_views, epoch_batches
from .init import grow_model, identity_refiner_init
from .losses import PixelObjective, UPLiFTTrainingObjective, loss_term_names
from .memory import device_memory_available, step_memory_advice
from .run import (
    CONFIG_RECORD,
    RUN_RECORD,
    TIME_SCHEDULES,
    describe_changes,
    prepare_run_folder,
    read_run_record,
    resume_changes,
    write_run_record,
)

StepCallback = Callable[[int, float], None]


def check_compatible(model: UPLiFTModel, backbone: FeatureBackbone, config: TrainConfig) -> None:
    """Raise ValueError when the model, the backbone and the crop size do not fit together."""
    cfg = model.config
    if cfg.in_channels != backbone.channels:
        raise InputError(f"the model upsamples {cfg.in_channels}-channel features but the backbone gives "
                         f"{backbone.channels} channels: set model.overrides.in_channels = {backbone.channels}")
    if cfg.patch_size != backbone.patch_size:
        raise InputError(f"model patch_size {cfg.patch_size} != backbone patch size {backbone.patch_size}")
    if cfg.image_normalization != backbone.image_normalization:
        raise InputError(f"model image_normalization {cfg.image_normalization!r} does not match the backbone's "
                         f"{backbone.image_normalization!r}")
    if config.loss.pixel_weight > 0 and not backbone.can_decode:
        raise InputError(f"loss.pixel_weight > 0 needs a backbone that decodes features to pixels (a VAE); "
                         f"{config.backbone.type!r} cannot: set loss.pixel_weight to 0")
    unit = backbone.patch_size * 2 ** max(config.loss.depths)
    if config.data.crop_size % unit:
        raise InputError(f"data.crop_size {config.data.crop_size} must be a multiple of patch_size * 2**max(depths) "
                         f"= {unit}")


def build_model(config: TrainConfig) -> UPLiFTModel:
    if config.model.init_from:
        model = UPLiFTModel.from_pretrained(config.model.init_from)
        if config.model.overrides:
            model = grow_model(model, config.model.overrides)
    else:
        model = UPLiFTModel.from_preset(config.model.preset, **config.model.overrides)
        if config.model.identity_refiner_init:
            identity_refiner_init(model)
    # The checkpoint records the colour correction its pixel loss was computed with, so that every pipeline built
    # with the exported model applies the one its measured quality depends on.
    detail = config.loss.pixel_color_correction == "detail"
    model.register_to_config(color_correction="detail" if detail else "mean", detail_sigma=config.loss.detail_sigma)
    return model


def _pca_rgb(features: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Project [B, C, h, w] features on a 3-component PCA basis and min-max them to [0, 1]."""
    b, c, h, w = features.shape
    flat = (features.permute(0, 2, 3, 1).reshape(-1, c) - mean) @ basis  # [B*h*w, 3]
    flat = (flat - flat.min(0).values) / (flat.max(0).values - flat.min(0).values + 1e-8)
    return flat.reshape(b, h, w, 3).permute(0, 3, 1, 2)


def item_generator(seed: int, step: int, position: int | str) -> torch.Generator:
    """The RNG of one item (its position in the global batch) or of the whole batch (``"batch"``) at one step: a
    function of (seed, step, position) only, so that the noise does not depend on how many processes share a batch."""
    digest = hashlib.sha256(f"{seed}|{step}|{position}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def launched_processes() -> int:
    """How many processes the launcher (``accelerate launch``, ``torchrun``, ``mpirun``) started: its world size."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An ``Accelerator`` joining every launched process, on CPU machines too.

    Without a GPU accelerate joins the processes of ``accelerate launch --multi_gpu`` / ``torchrun`` only when asked
    for the CPU (``cpu=True`` or ``ACCELERATE_USE_CPU=1``); otherwise each process would train alone on the whole
    data and write into the same folder. A launch that accelerate still does not join is refused.
    """
    launched = launched_processes()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=launched > 1 and not torch.cuda.is_available())
    if accelerator.num_processes != launched:
        raise InputError(f"{launched} processes were launched but accelerate set up {accelerator.num_processes} "
                         f"({accelerator.distributed_type}); start them with `accelerate launch` or `torchrun`")
    if launched == 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") \
            and "MASTER_ADDR" in os.environ:
        accelerator.print("warning: `accelerate launch --cpu --num_processes N` starts one process (accelerate's CPU "
                          "launcher needs mpirun for more); for N CPU processes use `ACCELERATE_USE_CPU=1 accelerate "
                          "launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`")
    return accelerator


def time_budget_schedule(trainer: Trainer, budget_s: float, kind: str) -> Callable[[int], float]:
    """Learning-rate factor of a run limited by ``max_minutes`` only: cosine or linear decay to 0 over the budget.

    Reads the trainer's ``elapsed`` (restored on resume), so a resumed run continues the same curve. A plain function,
    not an object: ``LambdaLR.state_dict`` would otherwise pickle its attributes (the trainer) into checkpoints.
    """

    def factor(_step: int) -> float:
        t = min(1.0, trainer.elapsed / budget_s)
        return 0.5 * (1.0 + math.cos(math.pi * t)) if kind == "cosine" else 1.0 - t

    return factor


class Trainer:
    """Train an UPLiFT model as a :class:`TrainConfig` describes.

    Args:
        config: the run's configuration.
        backbone: a ready :class:`FeatureBackbone` (default: built from ``config.backbone``).
        model: a ready model (default: built from ``config.model``).
        accelerator: an ``accelerate.Accelerator`` (default: :func:`make_accelerator` with ``config.mixed_precision``).
        overwrite: replace an earlier run in ``output_dir`` (and a feature cache made with other settings) instead of
            refusing it; see :func:`~uplift_diffusion.training.run.prepare_run_folder` (only what a run wrote is
            deleted).
    """

    clock: Callable[[], float] = staticmethod(time.monotonic)  # seconds; the max_minutes budget reads it

    def __init__(self, config: TrainConfig, backbone: FeatureBackbone | None = None,
                 model: UPLiFTModel | None = None, accelerator: Accelerator | None = None, overwrite: bool = False):
        config.validate()
        self.config, self.overwrite = config, overwrite
        self.accelerator = accelerator or make_accelerator(config.mixed_precision)
        processes = self.accelerator.num_processes
        if config.batch_size % processes:
            raise InputError(f"batch_size {config.batch_size} is the global batch of a step (all processes together) "
                             f"and must be divisible by the number of processes ({processes})")
        self.local_batch = config.batch_size // processes
        self.output_dir = Path(config.output_dir)
        self.levels = max(config.loss.depths)
        # The data first (every image's header is checked): a bad file is named before any weights load.
        self.dataset = ViewDataset.from_config(config.data, self.levels, config.seed)
        self.backbone = backbone if backbone is not None else load_backbone(config.backbone)
        set_seed(config.seed)
        self.model = model if model is not None else build_model(config)
        check_compatible(self.model, self.backbone, config)
        if getattr(self.backbone, "vae", None) is not None:  # the exported model names the latent space it learned
            self.model.register_to_config(latent_space=latent_space_record(self.backbone.vae))
        self.backbone.to(self.accelerator.device)
        self.cache = None
        if config.data.cache_dir:
            fingerprint = cache_fingerprint(self.backbone, config, self.levels, [s for s, _ in self.dataset.index])
            with self.accelerator.main_process_first():  # one process checks (or replaces) the folder's fingerprint
                self.cache = FeatureCache(config.data.cache_dir, fingerprint,
                                          prefix=f"r{self.accelerator.process_index}", overwrite=overwrite)
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", config.keep_last)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.elapsed = 0.0  # training seconds across resumes
        self._build_optimisation()

    def _build_optimisation(self) -> None:
        """The objective (model + loss), optimizer and learning-rate schedule, prepared by accelerate: everything
        :meth:`train`, :meth:`export` and the checkpoint methods read exists from construction on."""
        cfg, acc = self.config, self.accelerator
        optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                     weight_decay=cfg.optim.weight_decay)
        if cfg.max_steps is None and cfg.max_minutes is not None and cfg.optim.scheduler in TIME_SCHEDULES:
            # Only a time budget: a decaying schedule follows the elapsed training time instead of a step count.
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, time_budget_schedule(self, cfg.max_minutes * 60, cfg.optim.scheduler))
        else:
            total = cfg.max_steps if cfg.max_steps is not None else 10**9
            self.scheduler = get_scheduler(cfg.optim.scheduler, optimizer, num_warmup_steps=cfg.optim.warmup_steps,
                                           num_training_steps=total)
        loss = cfg.loss
        self.objective_pixel = None
        if loss.pixel_weight > 0:
            self.objective_pixel = PixelObjective.from_config(self.backbone.decode_differentiable,
                                                              self.backbone.patch_size, loss)
        objective = UPLiFTTrainingObjective(self.model, loss.depths, loss.noise_sigma, loss.latent_weight,
                                            self.objective_pixel)
        self._sync_batch_norm()
        self.objective, self.optimizer = acc.prepare(objective, optimizer)
        self.unwrapped = acc.unwrap_model(self.objective).model

    # ------------------------------------------------------------------ features
    def features(self, keys: list[str], images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone features of every pyramid level of a batch (cached when a cache is configured)."""
        if self.cache is None:
            return [self.backbone.encode(x) for x in images]
        return [self.cache.features(keys, x, self.backbone.encode) for x in images]

    def guides(self, keys: list[str], images: list[torch.Tensor], features: list[torch.Tensor]
               ) -> tuple[list[torch.Tensor | None] | None, torch.Tensor | None]:
        """The guide image of every pyramid level below the crop when ``loss.guide`` is not ``"photo"``: the
        backbone's decode of that level's features (cached like them), or per item either that or the photo
        (``"mixed"``, drawn per step and position in the global batch). Also which items' guides are decodes
        ([B] bool; ``None`` with photo guides), what a model with the ``"decoded"`` guide condition is told."""
        source = self.config.loss.guide
        if source == "photo":
            return None, None
        guides: list[torch.Tensor | None] = [None]
        for level in range(1, len(images)):
            if self.cache is None:
                decoded = self.backbone.decode(features[level])
            else:
                decoded = self.cache.features([f"{k}|decoded" for k in keys], features[level], self.backbone.decode)
            guides.append(decoded.to(images[level].dtype))
        pick = torch.ones(len(keys), dtype=torch.bool, device=images[0].device)
        if source == "mixed":
            seed, step = self.config.seed, self.step + 1
            first = self.accelerator.process_index * self.local_batch
            pick = torch.stack([torch.rand((), generator=item_generator(seed, step, f"{first + i}|guide")) < 0.5
                                for i in range(len(keys))]).to(images[0].device)
            guides = [None] + [torch.where(pick[:, None, None, None], g, x)
                               for g, x in zip(guides[1:], images[1:], strict=True)]
        return guides, pick

    @torch.no_grad()
    def fill_cache(self) -> None:
        """Encode every view of the dataset (and decode its guides when the loss needs them) into the feature cache
        now, so that a run (or several sharing the cache) starts with every backbone pass already paid."""
        if self.cache is None:
            raise InputError("fill_cache needs data.cache_dir: there is no feature cache to fill")
        batch = self.local_batch
        for start in tqdm(range(0, len(self.dataset), batch), desc="feature cache", leave=False):
            items = collate_views([self.dataset[i] for i in range(start, min(start + batch, len(self.dataset)))])
            images = [x.to(self.accelerator.device) for x in items["images"]]
            self.guides(items["keys"], images, self.features(items["keys"], images))
        self.cache.flush()

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        weights = acc.get_state_dict(self.objective)  # on every process: sharded (FSDP / DeepSpeed) states gather
        if acc.is_main_process:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "rng": capture_rng_state(), "epoch": self.epoch,
                     "batch_in_epoch": self.batch_in_epoch, "elapsed": self.elapsed}
            self.checkpoints.save(self.step, {k.removeprefix("model."): v for k, v in weights.items()}, state)
            self._preview()
        if self.cache is not None:
            self.cache.flush()
        acc.wait_for_everyone()
        if self.cache is not None:  # serve the views the other processes encoded too (they move between ranks)
            self.cache.refresh()

    def _resume(self) -> bool:
        found = self.checkpoints.load_latest()
        for message in self.checkpoints.skipped:
            self.accelerator.print(f"warning: {message}; using the previous checkpoint")
        if found is None:
            self.accelerator.print(f"no usable checkpoint in {self.checkpoints.folder}: starting from scratch")
            return False
        path, model_state, state = found
        self.unwrapped.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch, self.elapsed = int(state["batch_in_epoch"]), float(state["elapsed"])
        self.accelerator.print(f"resumed from {path} (step {self.step}, epoch {self.epoch})")
        return True

    def _apply_changes(self, changes: dict[str, list]) -> None:
        """Apply the optimizer settings a resumed run changed (the restored optimizer and scheduler states hold the old
        ones; everything else in :data:`~uplift_diffusion.training.run.CHANGEABLE` is read from the config at use)."""
        optim, groups = self.config.optim, self.optimizer.param_groups
        for group in groups:
            if "optim.betas" in changes:
                group["betas"] = tuple(optim.betas)
            if "optim.weight_decay" in changes:
                group["weight_decay"] = optim.weight_decay
        if "optim.lr" in changes:
            # The schedule multiplies its base rate by a factor: new base, same factor where the schedule stands.
            self.scheduler.base_lrs = [optim.lr] * len(groups)
            for group, factor in zip(groups, self.scheduler.lr_lambdas, strict=True):
                group["initial_lr"] = optim.lr
                group["lr"] = optim.lr * factor(self.scheduler.last_epoch)
            self.scheduler._last_lr = [group["lr"] for group in groups]

    def _record_run(self, resumed: bool, changes: dict[str, list]) -> None:
        """A new run writes its marker first, then the config it starts with; a resumed run keeps both and appends the
        settings it changed, with the step they apply after (train_config.json always says what the first steps
        used)."""
        if not resumed:
            write_run_record(self.output_dir)
            write_json_atomic(self.output_dir / CONFIG_RECORD, self.config.to_dict())
            return
        history = (read_run_record(self.output_dir) or {}).get("changes", [])
        if changes:
            history.append({"step": self.step, "changed": changes})
        write_run_record(self.output_dir, history)

    # ------------------------------------------------------------------ logging
    def _open_log(self) -> None:
        self.log_path = self.output_dir / "loss_log.csv"
        self.log_fields = ["step", "epoch", "loss", "lr", "elapsed_s"] + loss_term_names(
            self.config.loss.depths, self.objective_pixel)
        rows = []
        if self.log_path.is_file():  # drop rows a killed run wrote after its last checkpoint
            with open(self.log_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        with open(self.log_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.log_fields)
            writer.writeheader()
            writer.writerows(rows)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.output_dir / "tensorboard"))
        except ImportError:
            pass

    def _log(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Append the step's row: the loss and terms of the global batch (averaged over the processes, so that the log
        does not depend on their number). Called on every process (the average is a collective); the main one writes."""
        values = self.accelerator.reduce(torch.stack([loss.detach().float(), *terms.values()]), reduction="mean")
        if not self.accelerator.is_main_process:
            return
        loss, terms = values[0].item(), dict(zip(terms, values[1:], strict=True))
        row = {"step": self.step, "epoch": self.epoch, "loss": f"{loss:.6g}",
               "lr": f"{self.scheduler.get_last_lr()[0]:.6g}", "elapsed_s": f"{self.elapsed:.1f}",
               **{k: f"{v.item():.6g}" for k, v in terms.items()}}
        with open(self.log_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.log_fields).writerow(row)
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("loss", loss, self.step)
            for k, v in terms.items():
                self.tensorboard.add_scalar(f"terms/{k}", v.item(), self.step)

    # ------------------------------------------------------------------ previews
    @torch.no_grad()
    def _preview(self) -> Path | None:
        """Before/after grid of the first views: SR (VAE backbones) or PCA feature maps (others)."""
        n = min(self.config.preview_images, len(self.dataset.index))
        if n == 0:
            return None
        device = self.accelerator.device
        items = [self.dataset[i * self.dataset.views] for i in range(n)]
        images = [x.to(device) for x in collate_views(items)["images"]]
        d = min(2, self.levels)
        lr_image, hr_image = images[d], images[0]
        lr_feats, hr_feats = self.backbone.encode(lr_image), self.backbone.encode(hr_image)
        model = self.unwrapped
        was_training = model.training
        model.eval()
        up = model(model.normalize_image(lr_image), lr_feats.to(model.dtype), iterations=d,
                   generator=torch.Generator(device="cpu").manual_seed(0)).float()
        model.train(was_training)
        bilinear = F.interpolate(lr_feats, size=hr_feats.shape[-2:], mode="bilinear", align_corners=False)
        size = hr_image.shape[-2:]
        lr_big = F.interpolate(lr_image, size=size, mode="nearest")
        if self.backbone.can_decode:
            loss = self.config.loss
            mode = loss.pixel_color_correction if loss.pixel_color_correction != "none" else "mean"
            cc = ColorCorrection(clamp=(0, 1), mode=mode, detail_sigma=loss.detail_sigma)
            columns = [lr_big, self.backbone.decode(bilinear), cc(self.backbone.decode(up), lr_image), hr_image]
        else:
            c = hr_feats.shape[1]
            flat = hr_feats.permute(0, 2, 3, 1).reshape(-1, c).float()
            mean = flat.mean(0)
            basis = torch.linalg.svd(flat - mean, full_matrices=False).Vh[:3].T  # [C, 3]
            columns = [hr_image] + [F.interpolate(_pca_rgb(f.float(), basis, mean), size=size, mode="nearest")
                                    for f in (lr_feats, bilinear, up, hr_feats)]
        grid = np.concatenate([np.concatenate(list(float_to_uint8(col)), axis=0) for col in columns], axis=1)
        path = self.output_dir / "previews" / f"step-{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        return path

    # ------------------------------------------------------------------ the loop
    def _should_stop(self) -> bool:
        """The same answer on every process: the step and the (agreed) elapsed time are the same everywhere."""
        cfg = self.config
        return (cfg.max_steps is not None and self.step >= cfg.max_steps) or (
            cfg.max_minutes is not None and self.elapsed >= cfg.max_minutes * 60)

    def _agree(self, start: float, loss: torch.Tensor) -> None:
        """Share every process's elapsed time and loss after a step (one small collective), so that all take the same
        decisions: the elapsed time becomes the slowest process's (the stop at ``max_minutes`` and a time-budget
        learning rate must not differ, or the weights would part or one process would wait forever), and a non-finite
        loss on any process stops all of them."""
        mine = torch.tensor([[self.clock() - start, loss.item()]], dtype=torch.float64, device=self.accelerator.device)
        every = self.accelerator.gather(mine) if self.accelerator.num_processes > 1 else mine  # [processes, 2]
        self.elapsed = float(every[:, 0].max())
        bad = every[~torch.isfinite(every[:, 1]), 1]
        if len(bad):
            raise FloatingPointError(f"loss became {bad[0].item()} at step {self.step}; lower optim.lr or use "
                                     f"mixed_precision 'no' / 'bf16'")

    def _generators(self) -> tuple[list[torch.Generator], torch.Generator]:
        """This process's per-item RNGs of the coming step (its slice of the global batch) and the batch-wide one."""
        seed, step, first = self.config.seed, self.step + 1, self.accelerator.process_index * self.local_batch
        items = [item_generator(seed, step, first + i) for i in range(self.local_batch)]
        return items, item_generator(seed, step, "batch")

    def _sync_batch_norm(self) -> None:
        """Batch statistics of the global batch on N processes (SyncBatchNorm); CPU processes cannot share them."""
        acc = self.accelerator
        if acc.num_processes == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                             for m in self.model.modules()):
            return
        if acc.device.type == "cpu":
            acc.print(f"warning: the model has BatchNorm layers and SyncBatchNorm needs GPUs: on {acc.num_processes} "
                      f"CPU processes each normalises with the statistics of its own {self.local_batch} images, so "
                      f"the run differs from one process")
            return
        nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # in place: the model's root is not a norm layer

    def check_memory(self) -> None:
        """Refuse, in one line naming the value to lower, a step that the memory left cannot hold (estimated from the
        crop size, the batch, the model's widths and the depths): without this the kernel kills the run silently.
        The processes of a CPU run share the machine's memory; each accelerator has its own."""
        acc = self.accelerator
        processes = acc.num_processes if acc.device.type == "cpu" else 1
        advice = step_memory_advice(self.config, self.unwrapped, self.backbone, self.local_batch, processes,
                                    device_memory_available(acc.device))
        if advice is not None:
            raise InputError(advice)

    def train(self, resume: bool = False, callback: StepCallback | None = None) -> Path:
        """Run (or continue, with ``resume=True``) training; returns the folder of the exported model.

        Args:
            resume: continue from the newest valid checkpoint in ``output_dir/checkpoints``.
            callback: called as ``callback(step, loss)`` after every optimizer step (on every process; ``loss`` is
                that process's share of the batch).
        """
        cfg, acc = self.config, self.accelerator
        self.check_memory()
        keep = [cfg.data.cache_dir]
        # Every process checks (the same refusal everywhere, nobody left waiting); then the main one deletes.
        prepare_run_folder(self.output_dir, resume, self.overwrite, keep=keep, delete=False)
        changes = resume_changes(self.output_dir, cfg.to_dict()) if resume else {}
        acc.wait_for_everyone()
        if acc.is_main_process:
            prepare_run_folder(self.output_dir, resume, self.overwrite, keep=keep)
        acc.wait_for_everyone()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        resumed = self._resume() if resume else False
        if resumed and changes:
            self._apply_changes(changes)
            acc.print(f"resuming with changed settings (recorded in {RUN_RECORD}): {describe_changes(changes)}")
        if acc.is_main_process:
            self._record_run(resumed, changes)
            self._open_log()
        self.objective.train()

        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not acc.is_local_main_process,
                   desc="training", dynamic_ncols=True)
        start = self.clock() - self.elapsed
        last_saved = self.step if resume else -1
        while not self._should_stop():
            batches = epoch_batches(len(self.dataset), self.local_batch, self.epoch, cfg.seed, acc.process_index,
                                    acc.num_processes)
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches[self.batch_in_epoch:],
                                                 collate_fn=collate_views, num_workers=cfg.data.num_workers)
            for batch in loader:
                images = [x.to(acc.device) for x in batch["images"]]
                features = self.features(batch["keys"], images)
                guides, decoded = self.guides(batch["keys"], images, features)
                with acc.autocast():
                    loss, terms = self.objective(images, features, *self._generators(), guides, self.step, decoded)
                acc.backward(loss)
                if cfg.optim.max_grad_norm is not None:
                    acc.clip_grad_norm_(self.objective.parameters(), cfg.optim.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.batch_in_epoch += 1
                self._agree(start, loss)
                value = loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4g}", epoch=self.epoch)
                if self.step % cfg.log_every == 0:
                    self._log(loss, terms)
                if self.step % cfg.checkpoint_every == 0:
                    self._save_checkpoint()
                    last_saved = self.step
                if callback is not None:
                    callback(self.step, value)
                if self._should_stop():
                    break
            else:  # the epoch is exhausted
                self.epoch += 1
                self.batch_in_epoch = 0
        bar.close()
        if last_saved != self.step:
            self._save_checkpoint()
        if getattr(self, "tensorboard", None) is not None:
            self.tensorboard.close()
        return self.export()

    def export(self) -> Path:
        """``save_pretrained`` of the trained model into ``output_dir/model``."""
        path = self.output_dir / "model"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:  # whole or not at all, with the modes of ordinary files
            write_folder_atomic(path, self.unwrapped.save_pretrained)
        if self.cache is not None:
            self.cache.flush()
        self.accelerator.wait_for_everyone()  # the model is on disk before any process returns its path
        return path
