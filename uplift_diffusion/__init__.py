"""uplift-diffusion: UPLiFT feature upsampling for diffusers."""

from .attender import NEIGHBOURHOODS, LocalAttender
from .backbones.taef2 import TAEF2
from .color import ColorCorrection
from .model import UPLiFTModel
from .presets import PRESETS

__version__ = "0.1.0"

__all__ = ["ColorCorrection", "LocalAttender", "NEIGHBOURHOODS", "PRESETS", "TAEF2", "UPLiFTModel", "__version__"]
