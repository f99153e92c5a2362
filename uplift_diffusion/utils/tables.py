"""The one Markdown table writer (benchmark tables, linear-probe tables, demo tables)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   cell: Callable[[str, Any], str] | None = None) -> str:
    """A Markdown table: one line per row; ``cell(header, value)`` formats a value (default: ``str``, ``None`` as
    ``-``)."""
    def default(header: str, value: Any) -> str:
        return "-" if value is None else str(value)

    cell = cell or default
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(h, v) for h, v in zip(headers, row, strict=True)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
