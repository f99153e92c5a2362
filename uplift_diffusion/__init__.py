"""uplift-diffusion: UPLiFT feature upsampling for diffusers."""

from .attender import NEIGHBOURHOODS, LocalAttender
from .model import UPLiFTModel
from .presets import PRESETS

__version__ = "0.1.0"

__all__ = ["NEIGHBOURHOODS", "PRESETS", "LocalAttender", "UPLiFTModel", "__version__"]
