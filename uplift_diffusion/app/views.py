"""What the page shows of a result: the before / after slider's pair and labels, and the zoomed crops (the most
detailed region, or where the visitor clicked)."""

from __future__ import annotations

from PIL import Image

from uplift_diffusion.app.upscaler import UpscaleResult, crop_box

ZOOM_DISPLAY = 384  # the zoomed crops are enlarged (nearest) to at least this many pixels per side
COMPARE_LABELS = {"input": "input (nearest)", "bicubic": "pixel bicubic"}


def zoomed_crops(result: UpscaleResult, center: tuple[int, int] | None = None) -> list[tuple[Image.Image, str]]:
    """The same crop of the input, pixel-bicubic and UPLiFT around ``center`` (output pixels; default: the most
    detailed region), enlarged (nearest) so that pixels show."""
    box = crop_box(result.output_size, center or result.detail_center)
    side = box[2] - box[0]
    zoom = max(1, -(-ZOOM_DISPLAY // side))
    crops = []
    for path, caption in ((result.input_view, "input"), (result.bicubic_view, "pixel bicubic"),
                          (result.output_png, "UPLiFT")):
        with Image.open(path) as image:
            crop = image.crop(box)
        crops.append((crop.resize((side * zoom, side * zoom), Image.NEAREST), caption))
    return crops


def slider_pair(result: UpscaleResult, compare: str) -> tuple[Image.Image, Image.Image]:
    """The slider's (before, after): the input enlarged or pixel-bicubic, against UPLiFT."""
    before = result.bicubic_view if compare == "bicubic" else result.input_view
    with Image.open(before) as left, Image.open(result.output_png) as right:
        return left.copy(), right.copy()


def slider_labels(compare: str) -> str:
    """The names of the slider's two halves, shown above them."""
    return f"<span>◀ {COMPARE_LABELS.get(compare, compare)}</span><span>UPLiFT ▶</span>"
