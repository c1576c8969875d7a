"""The messages of a row that lacks a field, shared by the built-in strategies.

``datasets`` gives every row of a source the same columns, so a field a row does not set is
there with the value None, the same as an explicit ``null``: ``output: missing or null``.  A
column that no row of the source has is not in the row at all; the message then lists the
columns the data does have, and the dataset key that names the column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftk.core.errors import RowError, suggest


def missing_field(row: Mapping[str, Any], field: str, option: str | None = None) -> RowError:
    """The RowError for ``row[field]`` being absent or None; ``option`` is the key that names the column."""
    if field in row:
        return RowError(f"{field}: missing or null")
    columns = ", ".join(map(str, row)) or "none"
    fix = f"; set {option}" if option else ""
    return RowError(f"{field}: missing: no such column{suggest(field, list(row))} (columns: {columns}){fix}")


def text_value(row: Mapping[str, Any], field: str) -> str | None:
    """``row[field]`` when it is text, None when absent or null; other values are a RowError."""
    value = row.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"{field}: must be text, got {type(value).__name__}")
    return value


def required_text(row: Mapping[str, Any], field: str, option: str | None = None) -> str:
    """``row[field]`` as text; a RowError naming the field when it is absent, null or not text."""
    value = text_value(row, field)
    if value is None:
        raise missing_field(row, field, option)
    return value
