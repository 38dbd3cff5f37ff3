"""Markdown tables from polars frames, the same text for the same frame.

``markdown_table(frame, formats={"loss": fmt_loss}, headers={"loss": "val loss"})`` renders a
GitHub-flavoured table: one column per frame column in frame order, numbers right-aligned, nulls
as an em dash, ``|`` in a cell escaped. ``formats`` maps a column to a function from a non-null
value to text; other columns use ``default_format``. Reused by the probe report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

NULL = "—"


def default_format(value: Any) -> str:
    """Floats to 4 significant digits, bools as yes/no, anything else with ``str``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def code(text: str) -> str:
    """``text`` as inline code (chain texts), escaping nothing but the backtick delimiter."""
    return f"``{text}``" if "`" in text else f"`{text}`"


def markdown_table(
    frame: pl.DataFrame,
    formats: Mapping[str, Callable[[Any], str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """``frame`` as a Markdown table (ending in a newline); see the module docstring."""
    formats = formats or {}
    headers = headers or {}
    names = frame.columns
    numeric = [frame.schema[c].is_numeric() for c in names]
    lines = [
        _row(headers.get(c, c) for c in names),
        _row("---:" if n else "---" for n in numeric),
    ]
    for row in frame.iter_rows():
        cells = (
            NULL if v is None else formats.get(c, default_format)(v) for c, v in zip(names, row, strict=True)
        )
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def _row(cells: Any) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
