"""What the page says when a request goes wrong: :class:`PageError` for the visitor's mistakes, a generic sentence
for the server's (its traceback goes to the server log), and the number formats the messages use."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from uplift_diffusion.utils.errors import UserError

logger = logging.getLogger("uplift_diffusion.app")  # the page's one log (``serve`` prints it on the console)


class PageError(ValueError):
    """A problem with a request, worded for the person using the page (never contains a server path)."""


def user_message(err: Exception) -> str:
    """PageError, and the library's own refusals (UserError: e.g. not enough memory for this size, with its advice
    in the page's words), as they are, logged as one line (the visitor's request, not the server's bug); anything
    else as a generic sentence, its traceback in the server log (a real bug)."""
    if isinstance(err, (PageError, UserError)):
        text = str(err)
        if not isinstance(err, PageError):  # the command line's flags, as the page's settings
            text = text.replace("--tile-size ", "Advanced → Tile size ").replace("--scale ", "scale ")
        logger.warning("request refused: %s", text)
        return text
    logger.error("request failed", exc_info=err)
    return f"Something went wrong on the server ({type(err).__name__}); the details are in the server log."


def problems_markdown(title: str, lines: Sequence[str]) -> str:
    """A titled list of problems, as the page's message box shows it."""
    return f"### {title}\n\n" + "\n\n".join(f"⚠ {line}" for line in lines)


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP"


def seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 90 else f"{value / 60:.1f} min"
