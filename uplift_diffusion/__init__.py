"""uplift-diffusion: UPLiFT feature upsampling for diffusers."""

from importlib import import_module

from .attender import NEIGHBOURHOODS, LocalAttender
from .backbones.taef2 import TAEF2
from .color import ColorCorrection
from .model import UPLiFTModel
from .presets import PRESETS

__version__ = "0.1.0"

# The pipelines and the feature extractor sit above the model in the layering (they import it), so they are
# exported lazily: `from uplift_diffusion import UPLiFTPipeline` imports them on first use, never at package import.
_LAZY = {
    "UPLiFTPipeline": "uplift_diffusion.pipelines",
    "UPLiFTPipelineOutput": "uplift_diffusion.pipelines",
    "UPLiFTSuperResolutionPipeline": "uplift_diffusion.pipelines",
    "UPLiFTFeatureExtractor": "uplift_diffusion.features",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'uplift_diffusion' has no attribute {name!r}")


__all__ = [
    "ColorCorrection",
    "LocalAttender",
    "NEIGHBOURHOODS",
    "PRESETS",
    "TAEF2",
    "UPLiFTModel",
    "__version__",
    *_LAZY,
]
