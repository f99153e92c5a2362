"""uplift-diffusion: UPLiFT feature upsampling for diffusers."""

from uplift_diffusion.utils.lazy import lazy_exports

__version__ = "0.1.0"

# Every export is lazy: `from uplift_diffusion import UPLiFTModel` imports torch / diffusers on first use, never at
# package import, so that `uplift-diffusion --help` (which imports the package) answers at once. The pipelines and
# the feature extractor also sit above the model in the layering (they import it).
_LAZY = {
    "LocalAttender": "uplift_diffusion.attender",
    "NEIGHBOURHOODS": "uplift_diffusion.attender",
    "TAEF2": "uplift_diffusion.backbones.taef2",
    "ColorCorrection": "uplift_diffusion.color",
    "UPLiFTModel": "uplift_diffusion.model",
    "PRESETS": "uplift_diffusion.presets",
    "UPLiFTPipeline": "uplift_diffusion.pipelines",
    "UPLiFTFlux2KleinPipeline": "uplift_diffusion.pipelines",
    "UPLiFTFlux2Pipeline": "uplift_diffusion.pipelines",
    "UPLiFTPipelineOutput": "uplift_diffusion.pipelines",
    "UPLiFTSuperResolutionPipeline": "uplift_diffusion.pipelines",
    "UPLiFTFeatureExtractor": "uplift_diffusion.features",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = ["__version__", *_LAZY]
