"""Pixel-dense DINOv2 / DINOv3 features with UPLiFT: the extractor, joint-PCA maps and linear-probe evaluation.

- :class:`UPLiFTFeatureExtractor`: backbone + UPLiFT, ``extractor(images) -> [B, C, H, W]``.
- :func:`save_pca_strip` / :func:`extractor_pca_strip`: the paper's joint-PCA strip (App. D.3).
- :mod:`uplift_diffusion.features.probe`: linear probes (``uplift-diffusion probe``).
"""

from .extractor import FEATURE_PRESETS, UPLiFTFeatureExtractor, images_to_tensor
from .pca import JointPCA, extractor_pca_strip, fit_joint_pca, pca_strip, save_pca_strip

__all__ = [
    "FEATURE_PRESETS",
    "JointPCA",
    "UPLiFTFeatureExtractor",
    "extractor_pca_strip",
    "fit_joint_pca",
    "images_to_tensor",
    "pca_strip",
    "save_pca_strip",
]
