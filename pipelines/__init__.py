"""diffusers pipelines built on UPLiFT: text-to-image at high resolution and latent super-resolution.

Importing this package imports ``uplift_diffusion.model`` (and the TAEF2 module): diffusers >= 0.42.1 resolves the
components named in a saved ``model_index.json`` only from modules that are already imported.
"""

from uplift_diffusion.pipelines.common import UPLiFTPipelineOutput, upscale_latents
from uplift_diffusion.pipelines.flux2 import UPLiFTFlux2KleinPipeline, UPLiFTFlux2Pipeline
from uplift_diffusion.pipelines.super_resolution import UPLiFTSuperResolutionPipeline
from uplift_diffusion.pipelines.uplift_pipeline import UPLiFTPipeline

__all__ = ["UPLiFTFlux2KleinPipeline", "UPLiFTFlux2Pipeline", "UPLiFTPipeline", "UPLiFTPipelineOutput",
           "UPLiFTSuperResolutionPipeline", "upscale_latents"]
