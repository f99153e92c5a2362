"""What the page shows of a result: the before / after slider's pair and labels, and the zoomed crops (the most
detailed region, or where the visitor clicked)."""

from __future__ import annotations

from PIL import Image

from uplift_diffusion.app.upscaler import UpscaleResult, crop_box, zoomed

COMPARE_LABELS = {"input": "input (nearest)", "bicubic": "pixel bicubic"}


CROP_CAPTIONS = ("input", "pixel bicubic", "UPLiFT")


def zoomed_crops(result: UpscaleResult, center: tuple[int, int] | None = None
                 ) -> list[tuple[Image.Image | str, str]]:
    """The same crop of the input, pixel-bicubic and UPLiFT around ``center`` (output pixels; default: the most
    detailed region, written with the result), enlarged (nearest) so that pixels show."""
    if center is None and result.crops:
        return [(str(path), caption) for path, caption in zip(result.crops, CROP_CAPTIONS, strict=True)]
    box = crop_box(result.output_size, center or result.detail_center)
    crops = []
    for path, caption in zip((result.input_view, result.bicubic_view, result.output_png), CROP_CAPTIONS, strict=True):
        with Image.open(path) as image:
            crops.append((zoomed(image, box), caption))
    return crops


def slider_pair(result: UpscaleResult, compare: str) -> tuple[str, str]:
    """The slider's (before, after) files: the input enlarged or pixel-bicubic, against UPLiFT (written with the
    result: shown as they are, not encoded again)."""
    before = result.bicubic_view if compare == "bicubic" else result.input_view
    return str(before), str(result.output_png)


def slider_labels(compare: str) -> str:
    """The names of the slider's two halves, shown above them."""
    return f"<span>◀ {COMPARE_LABELS.get(compare, compare)}</span><span>UPLiFT ▶</span>"
