"""diffusers pipelines built on UPLiFT: text-to-image at high resolution and latent super-resolution.

Every export is lazy: ``from uplift_diffusion.pipelines import UPLiFTSuperResolutionPipeline`` (``upscale``, the web
page, ``eval sr``) imports neither the FLUX.2 nor the Stable Diffusion pipelines. diffusers >= 0.42.1 resolves the
components named in a saved ``model_index.json`` only from modules that are already imported, so each pipeline's
module imports the modules its saved folders name (``uplift_diffusion.model``, the TAEF2 module) itself.
"""

from uplift_diffusion.utils.lazy import lazy_exports

_LAZY = {
    "UPLiFTFlux2KleinPipeline": "uplift_diffusion.pipelines.flux2",
    "UPLiFTFlux2Pipeline": "uplift_diffusion.pipelines.flux2",
    "UPLiFTPipeline": "uplift_diffusion.pipelines.uplift_pipeline",
    "UPLiFTPipelineOutput": "uplift_diffusion.pipelines.common",
    "UPLiFTSuperResolutionPipeline": "uplift_diffusion.pipelines.super_resolution",
    "upscale_latents": "uplift_diffusion.pipelines.common",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = [*_LAZY]
