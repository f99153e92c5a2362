"""Log messages of our dependencies that say nothing, filtered one by one (never a whole logger or level).

diffusers 0.42's ``ModelMixin.to`` warns ``There are modules in X that should be kept in float32: []`` on every cast
to a dtype, even when the list is empty (it tests ``self._keep_in_fp32_modules or []`` against ``None``): the built-in
taef2 printed it on every run. Only that message with an empty list is dropped; a model that does keep modules in
float32 still warns, and every other diffusers warning is untouched. Standard library only: installing the filter
imports nothing heavy.
"""

from __future__ import annotations

import logging

_DIFFUSERS_MODELS = "diffusers.models.modeling_utils"


class _EmptyFloat32Notice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("There are modules in ") and "should be kept in float32: []." in message)


_FILTER = _EmptyFloat32Notice()


def silence_empty_float32_notice() -> None:
    """Drop diffusers' ``... should be kept in float32: []`` warning (idempotent; see the module docstring)."""
    logging.getLogger(_DIFFUSERS_MODELS).addFilter(_FILTER)  # the logger diffusers' get_logger(__name__) returns
