"""What is wrong with a local data file, said in one line that names the file and the line.

``datasets`` reads JSON lines with pyarrow, whose errors count rows from 0 and skip blank lines
("JSON parse error: ... in row 19" for line 20), and reads an empty file as ``StopIteration``.
ftk checks the cheap things before loading (an empty file, binary content, a file of another
format under a JSON or CSV name) and, when ``datasets`` fails on a JSON file, reads it again line
by line to say which line is wrong and how:

* ``data.jsonl:20: not valid JSON (Expecting ',' delimiter at column 8)``
* ``data.jsonl:10: expected a JSON object, got a number``

Blank (or whitespace-only) lines are skipped, as ``datasets`` skips them. A compressed file
(gzip, bz2, xz) is read through its decompressor, as ``datasets`` reads it.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NamedTuple

SAMPLE_BYTES = 1 << 16

#: Leading bytes of compressed files that ``datasets`` decompresses on the fly, and their openers.
COMPRESSED: dict[bytes, Any] = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}

#: Leading bytes of formats that are not text, and what to call them.
MAGIC: dict[bytes, str] = {
    b"PAR1": "a Parquet file",
    b"ARROW1": "an Arrow file",
    b"PK\x03\x04": "a zip archive",
    b"\x89HDF": "an HDF5 file",
    b"SQLite format 3\x00": "an SQLite database",
    b"\x93NUMPY": "a NumPy array",
}
#: The ``ds_type`` (and extension) that reads each of those formats, where ftk reads it.
FORMAT_OF = {"a Parquet file": "parquet", "an Arrow file": "arrow"}

UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class Problem(NamedTuple):
    """What is wrong with a data file, and on which line (None: the file as a whole)."""

    line: int | None
    text: str

    def message(self, name: str) -> str:
        """``data.jsonl:20: <text>``, or ``data.jsonl: <text>``; ``name`` is the file as the user wrote it."""
        return f"{name}:{self.line}: {self.text}" if self.line else f"{name}: {self.text}"


def json_kind(value: Any) -> str:
    """``a number``, ``a string``, ``an array``, ``null``, ... : what a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


@contextmanager
def open_data(path: Path) -> Iterator[IO[bytes]]:
    """``path`` opened for reading bytes, decompressed when it starts like a gzip, bz2 or xz file."""
    with path.open("rb") as probe:
        head = probe.read(8)
    opener = next((open_ for magic, open_ in COMPRESSED.items() if head.startswith(magic)), None)
    handle: IO[bytes] = opener(path, "rb") if opener is not None else path.open("rb")
    try:
        yield handle
    finally:
        handle.close()


def _first_bytes(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(16)


def _only_whitespace(handle: IO[bytes], sample: bytes) -> bool:
    """Whether the file holds nothing but whitespace (``sample`` is its start, already read)."""
    if sample.strip():
        return False
    for block in iter(lambda: handle.read(1 << 20), b""):
        if block.strip():
            return False
    return True


def _encoding_problem(sample: bytes, complete: bool, what: str) -> Problem | None:
    """Binary data (a NUL byte) or bytes that are not UTF-8 in ``sample``, the start of a file.

    ``complete`` says whether ``sample`` is the whole file (else a character cut at its end is fine).
    """
    nul = sample.find(b"\x00")
    if nul >= 0:
        return Problem(
            None, f"not a text file (byte {nul} is {sample[nul : nul + 1]!r}); {what} file is UTF-8 text"
        )
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if complete or exc.start < len(sample) - 3:
            start = sample.rfind(b"\n", 0, exc.start) + 1
            line = sample.count(b"\n", 0, exc.start) + 1
            byte = sample[exc.start : exc.start + 1]
            return Problem(
                line,
                f"not UTF-8 text (byte {byte!r} at column {exc.start - start + 1}); save the file as UTF-8",
            )
    return None


def text_file_problem(path: Path, builder: str) -> Problem | None:
    """Why ``path`` cannot be a ``builder`` (``json`` or ``csv``) file, or None when it may be one.

    Reads the first 64 KiB (the whole file only when that start is whitespace).
    """
    what = "a JSON-lines" if builder == "json" else "a CSV"
    kind = "JSON lines" if builder == "json" else "CSV"
    if path.stat().st_size == 0:
        return Problem(None, "empty file")
    head = _first_bytes(path)
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            fix = (
                f"; name it .{FORMAT_OF[name]} or set ds_type: {FORMAT_OF[name]}" if name in FORMAT_OF else ""
            )
            return Problem(None, f"this is {name}, not {kind}{fix}")
    if head.startswith(UTF16_BOMS):
        return Problem(None, "UTF-16 text; ftk reads UTF-8: save the file as UTF-8")
    with open_data(path) as handle:
        sample = handle.read(SAMPLE_BYTES)
        if _only_whitespace(handle, sample):
            return Problem(None, "empty file (only whitespace)")
        complete = len(sample) < SAMPLE_BYTES
    return _encoding_problem(sample, complete, what)


def binary_file_problem(path: Path, builder: str) -> Problem | None:
    """Why ``path`` cannot be a ``builder`` (``parquet`` or ``arrow``) file, or None when it may be one."""
    if path.stat().st_size == 0:
        return Problem(None, "empty file")
    head = _first_bytes(path)
    if builder == "parquet" and not head.startswith(b"PAR1"):
        return Problem(None, "not a Parquet file (a Parquet file starts with the bytes PAR1)")
    return None


def csv_file_problem(path: Path) -> Problem | None:
    """A CSV file with a header line and no rows, or None."""
    with open_data(path) as handle:
        lines = sum(1 for raw in handle if raw.strip())
    return Problem(None, "no rows (only a header line)") if lines <= 1 else None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def line_problem(raw: bytes) -> str | None:
    """What is wrong with one non-blank line of a JSON-lines file, or None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte {raw[exc.start : exc.start + 1]!r} at column {exc.start + 1})"
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    except ValueError as exc:  # a duplicate key, which pyarrow refuses
        return str(exc)
    if not isinstance(value, dict):
        return f"expected a JSON object, got {json_kind(value)}"
    return None


def _array_problem(handle: IO[bytes]) -> Problem | None:
    """What is wrong with a file that holds one JSON array, or None when it is fine.

    A file whose first line is a whole array followed by more lines is JSON lines whose first
    line is not an object: that is the problem then.
    """
    text = handle.read().decode("utf-8", errors="replace")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        first = text.lstrip().split("\n", 1)[0]
        try:
            json.loads(first)
        except json.JSONDecodeError:
            return Problem(exc.lineno, f"not valid JSON ({exc.msg} at column {exc.colno})")
        line = text[: len(text) - len(text.lstrip())].count("\n") + 1
        return Problem(line, "expected a JSON object, got an array")
    for index, item in enumerate(value if isinstance(value, list) else []):
        if not isinstance(item, dict):
            return Problem(
                None, f"item {index + 1} of the JSON array: expected a JSON object, got {json_kind(item)}"
            )
    return None


def json_file_problem(path: Path) -> Problem | None:
    """What is wrong with the first wrong line of a JSON (lines) file, or None.

    A file whose first character is ``[`` is one JSON array; any other is read as JSON lines.
    """
    with open_data(path) as handle:
        start = handle.read(SAMPLE_BYTES).lstrip()
        handle.seek(0)
        if start.startswith(b"["):
            return _array_problem(handle)
        for number, raw in enumerate(handle, 1):
            if raw.strip():
                problem = line_problem(raw.strip())
                if problem is not None:
                    return Problem(number, problem)
    return None


def has_blank_lines(path: Path) -> bool:
    """Whether a text file has a blank (or whitespace-only) line before its last line."""
    with open_data(path) as handle:
        lines = iter(handle)
        for raw in lines:
            if not raw.strip():
                return any(rest.strip() for rest in lines)
    return False


def without_blank_lines(path: Path, target: Path) -> Path:
    """Copy the text file ``path`` to ``target`` without its blank lines; returns ``target``."""
    with open_data(path) as source, target.open("wb") as out:
        for raw in source:
            if raw.strip():
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
    return target
