"""Load one dataset source: a local file or folder, a saved ``datasets`` directory, or a Hub name.

Local files are checked before ``datasets`` reads them, and a file it cannot read is read again to
name the wrong line (``ftk.core.data.file_checks``).

``split`` takes ``datasets``' split syntax for every source: a name (``train``), a slice of one
(``train[:20%]``, ``train[10:100]``, ``train[-5%:]``) or several joined with ``+``.  A local file is
the split ``train``; a folder and a saved ``datasets`` directory have the splits they hold.  Rows
of a slice are still named by their line (or number) in the whole source.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from datasets.data_files import EmptyDatasetError

from ftk.core.config.schema import DatasetConfig
from ftk.core.data.file_checks import (
    Problem,
    binary_file_problem,
    csv_file_problem,
    has_blank_lines,
    json_file_problem,
    text_file_problem,
    without_blank_lines,
)
from ftk.core.data.json_depth import nesting_problem
from ftk.core.data.row_location import RowLocator
from ftk.core.errors import FtkError

EXTENSION_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")
FORMAT_NAMES = {"json": "JSON lines", "parquet": "Parquet", "csv": "CSV", "arrow": "Arrow"}


def _builder_for(path: Path, dataset: DatasetConfig, where: str) -> str:
    if dataset.ds_type is not None:
        return dataset.ds_type
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()  # data.jsonl.gz: datasets decompresses it
    builder = EXTENSION_BUILDERS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise FtkError(f"{where}.path: cannot tell the format of {str(path)!r}; set ds_type")
    return builder


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


@contextmanager
def _quiet_loaders() -> Iterator[None]:
    """Silence the format readers' own error logs: ftk reports the problem in one line instead."""
    logger = logging.getLogger("datasets.packaged_modules")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def file_problem(path: Path, builder: str) -> Problem | None:
    """What makes ``path`` unreadable as a ``builder`` file, found without loading it, or None.

    A JSON file is read whole for how deeply its rows nest: pyarrow would crash on a deep one.
    """
    if builder == "json":
        return text_file_problem(path, builder) or nesting_problem(path)
    if builder == "csv":
        return text_file_problem(path, builder)
    return binary_file_problem(path, builder)


def _diagnose(path: Path, builder: str) -> Problem | None:
    """What is wrong with a file ``datasets`` could not read, found by reading it again, or None."""
    if builder == "json":
        return json_file_problem(path)
    return csv_file_problem(path) if builder == "csv" else None


def _cause(exc: BaseException) -> BaseException:
    return (
        exc.__cause__
        if isinstance(exc, datasets.exceptions.DatasetGenerationError) and exc.__cause__
        else exc
    )


def _load_file(path: Path, name: str, builder: str, cache_dir: Path | None = None) -> Dataset:
    """One local file, checked first; ``name`` is the path as the config gives it."""
    problem = file_problem(path, builder)
    if problem is not None:
        raise FtkError(problem.message(name))
    try:
        with _quiet_loaders():
            return datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=_text(cache_dir)
            )
    except Exception as exc:  # datasets raises many types; all mean "this file cannot be read"
        problem = _diagnose(path, builder)
        if problem is not None:
            raise FtkError(problem.message(name)) from exc
        cause = _cause(exc)
        error = FtkError(
            f"{name}: cannot be read as {FORMAT_NAMES[builder]}: {type(cause).__name__}: {cause}"
        )
        if builder != "json" or not has_blank_lines(path):
            raise error from exc
    # Every line is a JSON object, yet datasets failed: its reader of fields whose type varies
    # from row to row does not skip blank lines as the rest of it does.  Read it without them.
    with tempfile.TemporaryDirectory(prefix="ftk-jsonl-") as scratch:
        copy = without_blank_lines(path, Path(scratch) / "rows.jsonl")
        try:
            with _quiet_loaders():
                return datasets.load_dataset(
                    builder, data_files=str(copy), split="train", cache_dir=_text(cache_dir)
                )
        except Exception as exc:
            raise error from exc


def _data_files(folder: Path) -> list[tuple[Path, str]]:
    """The files under ``folder`` with a data extension ftk knows, and their format, in name order."""
    found = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        builder = EXTENSION_BUILDERS.get(file.suffix.lower())
        if builder is not None:
            found.append((file, builder))
    return found


def _folder_problem(folder: Path) -> str | None:
    """``file[:line]: problem`` for the first data file of ``folder`` that cannot be read, or None."""
    for file, builder in _data_files(folder):
        problem = file_problem(file, builder) or (json_file_problem(file) if builder == "json" else None)
        if problem is not None:
            return problem.message(str(file))
    return None


def _check_json_nesting(folder: Path) -> None:
    """An FtkError naming the first JSON file of ``folder`` and its line whose row nests too deeply."""
    for file, builder in _data_files(folder):
        problem = nesting_problem(file) if builder == "json" else None
        if problem is not None:
            raise FtkError(problem.message(str(file)))


def _text(cache_dir: Path | None) -> str | None:
    return None if cache_dir is None else str(cache_dir)


#: ``(path, split)`` of a sliced local source -> ``[(first row in the selection, its row in the
#: source), ...]``, recorded when it is loaded, so that messages name rows as in the whole source.
_SLICES: dict[tuple[str, str], list[tuple[int, int]]] = {}


def _split_names(split: str) -> list[str]:
    """The split names of a split expression (``train[:10%]+test`` -> ``[train, test]``)."""
    return [re.split(r"[\[(]", part, maxsplit=1)[0].strip() for part in split.split("+")]


def select_split(splits: dict[str, Dataset], dataset: DatasetConfig, where: str) -> Dataset:
    """The rows ``dataset.split`` selects from ``splits`` (name -> rows), in ``datasets``' syntax.

    An expression ``datasets`` cannot read, a split the source does not have and a selection with
    no rows are errors naming ``where.split``.
    """
    split = dataset.split
    try:
        instruction = datasets.ReadInstruction.from_spec(split)
    except (ValueError, AssertionError) as exc:
        raise FtkError(
            f"{where}.split: {split!r} is neither a split name nor a slice of one "
            f"(e.g. train, train[:20%], train[10:100], train[-5%:]): {exc}"
        ) from None
    missing = [name for name in _split_names(split) if name not in splits]
    if missing:
        raise FtkError(f"{where}.split: {missing[0]!r} not in {dataset.path!r} (has {', '.join(splits)})")
    parts, pieces, selected = [], [], 0
    for part in instruction.to_absolute({name: len(rows) for name, rows in splits.items()}):
        rows = splits[part.splitname]
        if part.from_ == 0 and part.to == len(rows):
            parts.append(rows)
        else:
            parts.append(rows.select(range(part.from_, part.to)))
        pieces.append((selected, part.from_))
        selected += max(part.to - part.from_, 0)
    if selected == 0:
        sizes = ", ".join(f"{name}: {len(rows)}" for name, rows in splits.items())
        raise FtkError(f"{where}.split: {split!r} selects no rows of {dataset.path!r} (rows: {sizes})")
    if pieces != [(0, 0)]:
        _SLICES[(dataset.path, split)] = pieces
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def load_source(dataset: DatasetConfig, where: str, cache_dir: Path | None = None) -> Dataset:
    """The raw rows of one ``datasets:`` entry; ``where`` (e.g. ``datasets[0]``) prefixes errors.

    A local file that is empty, binary, of another format, or not valid JSON lines is an error
    naming the file and, for JSON, the line (``data.jsonl:20: not valid JSON (...)``).  ``cache_dir``
    is where ``datasets`` keeps its copy of a local file or folder (default: its own cache).
    """
    path = Path(dataset.path).expanduser()
    loaded = _load(path, dataset, where, cache_dir)
    if len(loaded) == 0:
        raise FtkError(f"{dataset.path}: no rows")
    return loaded


def _load(path: Path, dataset: DatasetConfig, where: str, cache_dir: Path | None = None) -> Dataset:
    if path.is_file():
        rows = _load_file(path, dataset.path, _builder_for(path, dataset, where), cache_dir)
        return select_split({"train": rows}, dataset, where)
    try:
        if path.is_dir() and _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, DatasetDict):
                return select_split(dict(loaded), dataset, where)
            return select_split({"train": loaded}, dataset, where)
        if not path.is_dir() and (
            path.suffix.lower() in EXTENSION_BUILDERS or dataset.path.startswith((".", "/", "~"))
        ):
            raise FtkError(f"{where}.path: no such file or directory: {dataset.path!r}")
        if path.is_dir():
            _check_json_nesting(path)
        # A data folder and a Hub dataset name take the same road: datasets resolves both.
        with _quiet_loaders():
            loaded = datasets.load_dataset(
                str(path) if path.is_dir() else dataset.path,
                name=dataset.name,
                data_files=dataset.data_files,
                split=None if path.is_dir() else dataset.split,
                cache_dir=_text(cache_dir) if path.is_dir() else None,
            )
        if isinstance(loaded, DatasetDict):  # a folder: its splits, as datasets names them
            return select_split(dict(loaded), dataset, where)
        return loaded
    except FtkError:
        raise
    except Exception as exc:  # datasets raises many types; all mean "this source cannot be read"
        cause = _cause(exc)
        if path.is_dir():
            if isinstance(cause, EmptyDatasetError) or not _data_files(path):
                raise FtkError(
                    f"{where}.path: no data files in the folder {dataset.path!r} "
                    f"(ftk reads {', '.join(EXTENSION_BUILDERS)})"
                ) from exc
            problem = _folder_problem(path)
            if problem is not None:
                raise FtkError(problem) from exc
        raise FtkError(
            f"{where}.path: cannot load {dataset.path!r}: {type(cause).__name__}: {cause}"
        ) from exc


def row_locator(dataset: DatasetConfig) -> RowLocator:
    """Names the rows of a source in messages: by line for a JSON-lines file, else by number."""
    path = Path(dataset.path).expanduser()
    json_lines = False
    if path.is_file():
        try:
            json_lines = _builder_for(path, dataset, "") == "json"
        except FtkError:
            json_lines = False
    locator = RowLocator(dataset.path, json_lines)
    pieces = _SLICES.get((dataset.path, dataset.split))
    return SlicedRowLocator(locator, pieces) if pieces else locator


class SlicedRowLocator(RowLocator):
    """A ``RowLocator`` for a slice of a source: row ``i`` of the slice is named as in the source."""

    def __init__(self, whole: RowLocator, pieces: list[tuple[int, int]]) -> None:
        super().__init__(whole.path, whole.json_lines)
        self.whole = whole
        self.pieces = pieces
        self._starts = [start for start, _ in pieces]

    def source_index(self, row_index: int) -> int:
        """The index in the whole source of the slice's row ``row_index``."""
        start, first = self.pieces[max(bisect_right(self._starts, row_index) - 1, 0)]
        return first + row_index - start

    def line(self, row_index: int) -> int | None:
        """The 1-based line in the file of the slice's row ``row_index`` (None: no lines)."""
        return self.whole.line(self.source_index(row_index))

    def where(self, row_index: int) -> str:
        """``data.jsonl:20`` or ``data.parquet: row 20``, counted in the whole source."""
        return self.whole.where(self.source_index(row_index))

    def describe(self, row_index: int, message: str) -> str:
        """``<where>: <message>``, the row counted in the whole source."""
        return self.whole.describe(self.source_index(row_index), message)


def source_fingerprint(dataset: DatasetConfig, loaded: Dataset | None = None) -> str:
    """A digest that changes whenever the source's content changes.

    Local files and folders are hashed byte for byte (``loaded`` is not needed); for Hub datasets,
    ``datasets``' own fingerprint of the downloaded files (of ``loaded``) stands in.
    """
    path = Path(dataset.path).expanduser()
    digest = hashlib.sha256()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digest.update(str(file.relative_to(path) if file != path else file.name).encode())
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    else:
        assert loaded is not None, f"{dataset.path}: a Hub dataset's digest needs the loaded dataset"
        digest.update(f"hub:{dataset.path}:{dataset.name}:{dataset.split}:{loaded._fingerprint}".encode())
    return digest.hexdigest()
