"""The web page of ``uplift-diffusion serve``: a Gradio app for people who do not write Python.

* **Upscale**: one or more photos (or a click on an example photo), previewed with their size before and after;
  2x / 4x / 8x, each with what it measured against pixel bicubic (8x says it does no better), or any factor from 1
  to 8; colour correction and tiles under "Advanced"; one progress bar over the whole request with the time left
  (from the pace measured per model part), brought into view with the result; a busy Upscale button, Cancel, and a
  job that stops when its visitor leaves; a before / after slider with labelled halves (the input, or pixel-bicubic,
  against UPLiFT; its divider moved by arrow keys or a click), the full-resolution download beside it; the same crop
  zoomed (the most detailed region, or wherever the visitor clicks on the full-size view); the result at 1:1; PNG
  downloads and, for several photos, one zip.
* **Features** (only when a DINO backbone was loaded): the joint-PCA strip (``image | backbone | step 1 | ... |
  step n``) of the predictive sibling.
* **API**: ``/upscale`` (photos, scale from 1 to 8, colour correction, tiles -> PNG files and a summary), documented
  under "Use via API" in the footer; the page's own events are private.

Everything a request can get wrong (not an image, empty, too small, too large, ...) becomes a message in the page,
next to the result, in plain words, kept until the next run; server file paths never appear in them (uploads live in
temporary folders). The server log gets one line per refused request and a traceback only for real bugs.

The rooms: :mod:`.layout` (the Gradio page, its events, ``launch``), :mod:`.upscaler` (limits, uploads, running
the pipeline, result files), :mod:`.progress` (multiply-add counting and the time left), :mod:`.views` (slider and
zoomed crops), :mod:`.features` (the Features tab's model), :mod:`.messages` (errors in the visitor's words).
"""

from uplift_diffusion.app.features import FeatureStrips
from uplift_diffusion.app.layout import (
    EXAMPLE_PHOTOS,
    SCALE_CHOICES,
    build_demo,
    example_photos,
    launch,
    model_quality_line,
    scale_radio,
)
from uplift_diffusion.app.messages import PageError, user_message
from uplift_diffusion.app.progress import JobCancelled, RequestProgress, WorkCounter, WorkPlan
from uplift_diffusion.app.upscaler import PageLimits, PageUpscaler, UpscaleResult, crop_box, most_detailed_center

__all__ = [
    "EXAMPLE_PHOTOS", "SCALE_CHOICES", "FeatureStrips", "JobCancelled", "PageError", "PageLimits", "PageUpscaler",
    "RequestProgress", "UpscaleResult", "WorkCounter", "WorkPlan", "build_demo", "crop_box", "example_photos", "launch",
    "model_quality_line", "most_detailed_center", "scale_radio", "user_message",
]
