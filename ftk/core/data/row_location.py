"""Where a row came from, for messages: the line of a JSON-lines file, else the row number.

A row of a JSON-lines file is named by its line (``data.jsonl:20: messages: missing``), counted
as an editor counts them: blank lines, which ``datasets`` skips, still count.  A row of any other
source (Parquet, CSV, Arrow, a folder, a Hub dataset, one JSON array) is named by its number from
1 (``data.parquet: row 20: ...``).  The file is read only when a message needs a line, once.
"""

from __future__ import annotations

import json
from array import array
from bisect import bisect_right
from pathlib import Path

from ftk.core.data.file_checks import line_problem, open_data


def _one_value(line: bytes) -> bool:
    """Whether ``line`` is one whole JSON value other than an array (a JSON-lines row)."""
    try:
        return not isinstance(json.loads(line), list)
    except ValueError:
        return False


class RowLocator:
    """Turns a row index (from 0, of the whole source) into ``file:line`` or ``file: row N``."""

    def __init__(self, path: str, json_lines: bool) -> None:
        self.path = path
        self.json_lines = json_lines
        self._scanned = False
        # Per blank line before the last row: its line number minus the blank lines before it.
        self._blank_keys = array("q")
        self._not_objects: dict[int, str] = {}

    def __getstate__(self) -> dict:
        """Pickled without the scan (a worker process reads the file again if it needs a line)."""
        state = dict(self.__dict__)
        state.update(_scanned=False, _blank_keys=array("q"), _not_objects={})
        return state

    def _scan(self) -> None:
        self._scanned = True
        if not self.json_lines:
            return
        blank_keys, not_objects = array("q"), {}
        path = Path(self.path).expanduser()
        first = True
        with open_data(path) as handle:
            for number, raw in enumerate(handle, 1):
                stripped = raw.strip()
                if not stripped:
                    blank_keys.append(number - len(blank_keys))
                    continue
                if first and not _one_value(stripped):
                    # The first line is not a whole JSON value: one JSON document (an array, or
                    # an object spread over lines), whose rows are not lines.
                    self.json_lines = False
                    return
                first = False
                if not stripped.startswith(b"{"):
                    not_objects[number] = line_problem(stripped) or ""
        self._blank_keys, self._not_objects = blank_keys, not_objects

    def line(self, row_index: int) -> int | None:
        """The 1-based line of the row ``row_index``, or None when the source has no lines."""
        if not self._scanned:
            self._scan()
        if not self.json_lines:
            return None
        position = row_index + 1
        return position + bisect_right(self._blank_keys, position)

    def where(self, row_index: int) -> str:
        """``data.jsonl:20`` or ``data.parquet: row 20``."""
        line = self.line(row_index)
        return f"{self.path}:{line}" if line is not None else f"{self.path}: row {row_index + 1}"

    def describe(self, row_index: int, message: str) -> str:
        """``<where>: <message>``; for a JSON line that is not an object, what it is instead."""
        line = self.line(row_index)
        if line is not None and self._not_objects.get(line):
            message = self._not_objects[line]
        return f"{self.where(row_index)}: {message}"
