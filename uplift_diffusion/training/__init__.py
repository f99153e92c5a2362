"""Training UPLiFT: multi-depth, multi-step feature reconstruction (paper §3.3) with accelerate.

    from uplift_diffusion.training import TrainConfig, Trainer
    Trainer(TrainConfig.from_file("configs/taef2_bsds.json")).train()

or ``uplift-diffusion train --config configs/taef2_bsds.json [--resume]`` (also under ``accelerate launch``).
"""

from .cache import FeatureCache
from .checkpoints import CheckpointError, CheckpointManager
from .config import TrainConfig
from .losses import multi_depth_loss
from .trainer import Trainer

__all__ = ["CheckpointError", "CheckpointManager", "FeatureCache", "TrainConfig", "Trainer", "multi_depth_loss"]
