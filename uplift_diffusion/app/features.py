"""The page's Features tab: the joint-PCA strip of a DINO backbone's features and every UPLiFT step, when a
backbone was loaded (else the reason, for the server log)."""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from uplift_diffusion.app.messages import PageError, logger
from uplift_diffusion.utils.images import load_image


class FeatureStrips:
    """The Features tab's model: an :class:`UPLiFTFeatureExtractor`, or the reason there is none.

    Args:
        extractor: a loaded extractor, or ``None``.
        unavailable: why there is no extractor (logged by the server; the tab is then not shown).
        max_side: images are resized so that their longer side is at most this many pixels first.
        iterations: UPLiFT 2x steps in the strip.
    """

    def __init__(self, extractor=None, unavailable: str | None = None, max_side: int = 448, iterations: int = 4):
        self.extractor = extractor
        self.unavailable = unavailable
        self.max_side = max_side
        self.iterations = iterations
        self._lock = threading.Lock()

    @classmethod
    def load(cls, backbone: str | None, backbone_weights: str | None = None, upsampler: str | None = None,
             device=None, **kwargs) -> FeatureStrips:
        """Try to load a DINO extractor; on failure keep the reason (paths stripped) for the server log."""
        how = ("Start the page with a backbone, e.g. `uplift-diffusion serve --backbone dinov2-s14` (downloads "
               "timm's DINOv2 ViT-S/14 and its published UPLiFT upsampler from the Hugging Face Hub), or offline with "
               "local files: `--backbone dinov2-s14 --backbone-weights model.safetensors --features-upsampler "
               "uplift_dinov2-s14.safetensors`.")
        if backbone is None:
            return cls(unavailable=f"No DINO backbone was requested. {how}", **kwargs)
        try:
            from uplift_diffusion.features import UPLiFTFeatureExtractor

            extractor = UPLiFTFeatureExtractor.from_pretrained(backbone, backbone=backbone_weights,
                                                               upsampler=upsampler, device=device)
        except Exception as err:  # offline, missing timm, wrong files: the page still serves the Upscale tab
            logger.warning("features tab disabled: %s", err)
            reason = type(err).__name__ if isinstance(err, (OSError, ImportError)) else "the files do not fit"
            return cls(unavailable=f"The DINO backbone {backbone!r} could not be loaded ({reason}). {how}", **kwargs)
        return cls(extractor=extractor, **kwargs)

    def strip(self, path: str | Path) -> Image.Image:
        if self.extractor is None:
            raise PageError(self.unavailable)
        name = Path(path).name
        try:
            image = load_image(path, name=name)
        except ValueError:
            raise PageError(f"{name} is not an image this page can read") from None
        scale = self.max_side / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        if min(image.size) < self.extractor.patch_size:
            raise PageError(f"{name} is {image.width}×{image.height} pixels, smaller than one "
                            f"{self.extractor.patch_size}×{self.extractor.patch_size} patch of the backbone")
        from uplift_diffusion.features.pca import extractor_pca_strip

        with self._lock:
            return extractor_pca_strip(self.extractor, image, iterations=self.iterations)
