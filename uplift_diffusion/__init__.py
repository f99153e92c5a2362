"""uplift-diffusion: UPLiFT feature upsampling for diffusers."""

from importlib import import_module

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


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'uplift_diffusion' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", *_LAZY]
