"""The super-resolution pipeline around a tiny random upsampler, shared by the SR pipeline tests."""

import torch

from uplift_diffusion import UPLiFTModel, UPLiFTSuperResolutionPipeline


def make_pipe(vae, **overrides):
    """The pipeline on ``vae`` with a tiny-vae UPLiFT (seed 0; ``overrides`` go to its preset), progress bar off."""
    torch.manual_seed(0)
    upsampler = UPLiFTModel.from_preset("tiny-vae", in_channels=vae.config.latent_channels, **overrides).eval()
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upsampler=upsampler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
