"""How deeply the rows of a JSON (lines) file nest, checked before ``datasets`` reads the file.

pyarrow, which reads JSON for ``datasets``, refuses a row nested deeper than its schemas go
(``Recursion level in ArrowSchema struct exceeded``, for the whole file, with no line) and crashes
the process (a segmentation fault) on a row nested thousands of levels deep; Python's ``json``
raises RecursionError on it.  So every line is measured first, at numpy speed: a line whose
arrays and objects nest more than ``MAX_DEPTH`` levels (the row object counted) is an error that
names the line: ``data.jsonl:2: nested 100,000 levels deep (arrays and objects); a row may nest
63 at most``.

The fast pass counts brackets without telling those inside strings apart, so it can only
overstate a line's depth; a line it finds too deep is measured again with its strings removed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ftk.core.data.file_checks import SAMPLE_BYTES, Problem, open_data

#: The deepest a row may nest, the row object itself counted as 1: pyarrow reads 63 levels, not 64.
MAX_DEPTH = 63
BLOCK_BYTES = 1 << 22

#: Maps an opening bracket to 1, a closing one to 255 (-1 as a signed byte), any other byte to 0.
_STEPS = bytes(1 if byte in b"[{" else 255 if byte in b"]}" else 0 for byte in range(256))
#: A JSON string, escapes included (a JSON string holds no raw line break); what is left is structure.
_STRING = re.compile(rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"')


def _brackets(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the brackets in ``data`` and their steps (+1 opening, -1 closing)."""
    steps = np.frombuffer(data.translate(_STEPS), dtype=np.int8)
    where = np.flatnonzero(steps.view(np.bool_))  # much faster than on the signed bytes
    return where, steps[where].astype(np.int64)


def depth_of(text: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON ``text``, brackets inside strings left out."""
    _, steps = _brackets(_STRING.sub(b"", text))
    return int(np.cumsum(steps).max()) if len(steps) else 0


def _too_deep(line: int, depth: int) -> Problem:
    return Problem(
        line, f"nested {depth:,} levels deep (arrays and objects); a row may nest {MAX_DEPTH} at most"
    )


def nesting_problem(path: Path) -> Problem | None:
    """The first line of a JSON-lines file whose row nests more than ``MAX_DEPTH`` levels, or None.

    A file whose first character is ``[`` is one JSON array of rows, measured as a whole (one
    level more: the array).
    """
    with open_data(path) as handle:
        is_array = handle.read(SAMPLE_BYTES).lstrip().startswith(b"[")
        handle.seek(0)
        if is_array:
            return _array_problem(handle.read())
        first_line = 1
        while block := handle.read(BLOCK_BYTES):
            if not block.endswith(b"\n"):
                block += handle.readline()  # whole lines only
            problem = _block_problem(block, first_line)
            if problem is not None:
                return problem
            first_line += block.count(b"\n")
    return None


def _block_problem(block: bytes, first_line: int) -> Problem | None:
    """The first line of ``block`` (whole lines, the first of them ``first_line``) nested too deeply, or None.

    Brackets inside strings are counted too, which can only overstate a line's depth: a line found
    too deep is measured again without its strings.
    """
    where, steps = _brackets(block)
    if not len(where):
        return None
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n"))
    line_of = np.searchsorted(ends, where)  # the line (from 0) of each bracket
    depth = np.cumsum(steps)
    first = np.flatnonzero(np.diff(line_of, prepend=-1))  # each line's first bracket
    before = np.where(first > 0, depth[first - 1], 0)  # the nesting where that line starts
    deepest = np.maximum.reduceat(depth, first) - before
    for group in np.flatnonzero(deepest > MAX_DEPTH):
        line = int(line_of[first[group]])
        start = int(ends[line - 1]) + 1 if line else 0
        end = int(ends[line]) if line < len(ends) else len(block)
        line_depth = depth_of(block[start:end])
        if line_depth > MAX_DEPTH:
            return _too_deep(first_line + line, line_depth)
    return None


def _array_problem(text: bytes) -> Problem | None:
    """Where one JSON array of rows nests a row too deeply, or None; the rows are one level down."""
    structure = _STRING.sub(b"", text)
    where, steps = _brackets(structure)
    depth = np.cumsum(steps)
    over = np.flatnonzero(depth > MAX_DEPTH + 1)
    if not len(over):
        return None
    line = structure.count(b"\n", 0, int(where[over[0]])) + 1
    return _too_deep(line, int(depth.max()) - 1)
