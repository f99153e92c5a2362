"""Deprecated home of the image helpers: they live in :mod:`uplift_diffusion.utils.images` (reading) and
:mod:`uplift_diffusion.utils.io` (atomic writes). Kept as a re-export for code written against it; note that
``load_image`` now returns the RGB image alone (conversions are reported as warnings)."""

from uplift_diffusion.utils.images import IMAGE_SUFFIXES, expand_inputs, load_image, to_rgb
from uplift_diffusion.utils.io import ensure_writable_dir, save_image_atomic

__all__ = ["IMAGE_SUFFIXES", "ensure_writable_dir", "expand_inputs", "load_image", "save_image_atomic", "to_rgb"]
