"""Training UPLiFT: multi-depth, multi-step feature reconstruction (paper §3.3) with accelerate.

    from uplift_diffusion.training import TrainConfig, Trainer
    Trainer(TrainConfig.from_file("configs/taef2_bsds.json")).train()

or ``uplift-diffusion train --config configs/taef2_bsds.json [--resume]`` (also under ``accelerate launch``).
"""

from uplift_diffusion.utils.lazy import lazy_exports

# Lazy exports (as the package's): `uplift-diffusion train` reads and checks its config and output folder
# (training.config, training.run: standard library only) before torch is imported.
_LAZY = {
    "CheckpointError": "uplift_diffusion.utils.errors",
    "CheckpointManager": "uplift_diffusion.training.checkpoints",
    "FeatureCache": "uplift_diffusion.training.cache",
    "TrainConfig": "uplift_diffusion.training.config",
    "Trainer": "uplift_diffusion.training.trainer",
    "multi_depth_loss": "uplift_diffusion.training.losses",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = list(_LAZY)
