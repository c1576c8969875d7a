"""Turn one source's rows into training examples with its strategy, applying the row policies.

Policies (top-level config keys):

* ``invalid_rows``: a row the strategy rejects (missing field, unknown role, ...) stops the run
  with the file, row and problem (``raise``, the default), or is skipped and counted (``skip``);
* ``excess_length_strategy``: an example longer than ``sequence_len`` is dropped and counted
  (``drop``, the default), cut to ``sequence_len`` (``truncate``), or stops the run (``raise``);
* an example with no trained token teaches nothing: it is always dropped and counted.

A row with a text far longer than ``sequence_len`` could need (one message of 50 million
characters) is converted first with its long texts cut (``RowConverter._convert_cut``), so its
fate costs a few hundred thousand characters of tokenizing instead of a minute and gigabytes.

With several processes (``dataset_processes``), each worker needs the row function. A forked
worker finds the one built here (the parent's memory is its own); any other worker receives the
strategy, the dataset entry, the config and the tokenizer, all picklable, and builds its own.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ftk.core.config.loader import resolve_strategy
from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.data.columns import column_array
from ftk.core.data.row_location import RowLocator
from ftk.core.data.sources import row_locator
from ftk.core.errors import FtkError
from ftk.core.lm import IGNORE_INDEX
from ftk.core.registry import Registry, RowFeatures, Strategy

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

FEATURES = ("input_ids", "labels", "attention_mask")
MAX_EXAMPLE_PROBLEMS = 5
#: Unless ``dataset_processes`` says, tokenization takes one process per this much source data (about
#: a second of work on one core), up to every core: starting a worker costs a few tenths of a second.
BYTES_PER_PROCESS = 1 << 20

# What happened to an example, in the "problem" column: kept (as it is, or cut), or dropped and why.
KEPT, TRUNCATED, INVALID, TOO_LONG, NOTHING_TRAINED = 0, 1, 2, 3, 4

#: A row with a text longer than this many characters per token of ``sequence_len`` is first
#: converted with its long texts cut to that length (real text has 3 to 5 characters a token).
CUT_CHARS_PER_TOKEN = 16
#: The cut long enough whatever the text is this many times ``sequence_len`` times the characters
#: of the longest vocabulary entry: room for a normalizer that joins characters (NFC, up to 3 in 1).
NORMALIZER_ROOM = 4


@dataclass
class SourceStats:
    """What happened to one source's rows."""

    path: str
    split: str = "train"
    rows: int = 0
    kept: int = 0
    invalid: int = 0
    too_long: int = 0
    truncated: int = 0
    nothing_trained: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    invalid_examples: list[str] = field(default_factory=list)
    nothing_trained_examples: list[str] = field(default_factory=list)  # where, e.g. data.jsonl:4
    too_long_examples: list[str] = field(default_factory=list)  # dropped as too long, where

    @property
    def dropped(self) -> int:
        """Examples not kept, for any reason."""
        return self.invalid + self.too_long + self.nothing_trained


# The types ``datasets`` itself gives these columns (it narrows input_ids and attention_mask).
_COLUMNS = (
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int64())),
    ("attention_mask", pa.list_(pa.int8())),
    ("length", pa.int64()),
    ("trained", pa.int64()),
    ("problem", pa.int64()),
    ("detail", pa.string()),
)


class _Output:
    """The columns of one batch of examples (a dropped example keeps its row with no tokens)."""

    def __init__(self) -> None:
        self.input_ids: list[list[int]] = []
        self.labels: list[list[int]] = []
        self.attention_mask: list[list[int]] = []
        self.length: list[int] = []
        self.trained: list[int] = []
        self.problem: list[int] = []
        self.detail: list[str] = []

    def add(self, ids: list[int], labels: list[int], mask: list[int], trained: int, problem: int) -> None:
        self.input_ids.append(ids)
        self.labels.append(labels)
        self.attention_mask.append(mask)
        self.length.append(len(ids))
        self.trained.append(trained)
        self.problem.append(problem)
        self.detail.append("")

    def drop(self, problem: int, detail: str = "") -> None:
        self.add([], [], [], 0, problem)
        self.detail[-1] = detail

    def table(self) -> pa.Table:
        """The batch as an arrow table of known types: ``datasets`` would otherwise inspect every
        token of every list in Python to infer them (a fifth of the preprocessing time)."""
        return pa.table({name: pa.array(getattr(self, name), type=type_) for name, type_ in _COLUMNS})


def trained_count(labels: list[int]) -> int:
    """Labels that are trained targets; ``labels[0]`` never is (position t predicts label t+1)."""
    if not labels:
        return 0
    return len(labels) - 1 - labels.count(IGNORE_INDEX) + (labels[0] == IGNORE_INDEX)


#: Row converters of the sources being tokenized now, by key: a forked worker finds its own here.
_LIVE: dict[str, RowConverter] = {}


def _live_converter(key: str) -> RowConverter:
    return _LIVE[key]


def longest_text(value: Any) -> int:
    """The length of the longest string anywhere in ``value`` (a row: mappings, lists, scalars)."""
    longest = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            longest = max(longest, len(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return longest


def cut_texts(value: Any, chars: int) -> Any:
    """``value`` with every string in it longer than ``chars`` cut to its first ``chars`` characters."""
    if isinstance(value, str):
        return value[:chars] if len(value) > chars else value
    if isinstance(value, dict):
        return {key: cut_texts(item, chars) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [cut_texts(item, chars) for item in value]
    return value


def longest_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters one token can stand for: its longest vocabulary entry, in characters.

    A byte-level entry has a character per byte, never fewer than the text it decodes to.
    """
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


def _workers_fork() -> bool:
    """Whether ``datasets``' worker processes start as forks of this one (they share its memory)."""
    import multiprocess  # datasets' own dependency

    return bool(multiprocess.get_start_method() == "fork")


class RowConverter:
    """The batched ``datasets.map`` function for one source: strategy + policies, per row.

    Picklable: a forked worker looks up the converter built here while it is registered in
    ``_LIVE`` (see ``tokenize_source``); any other pickle carries the strategy, dataset entry,
    config and tokenizer, and the strategy's row function is built again where it is unpickled.
    """

    def __init__(
        self, strategy: Strategy, dataset: DatasetConfig, cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        self.strategy = strategy
        self.dataset = dataset
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.to_features: Callable[[dict[str, Any]], RowFeatures] = strategy.build(dataset, tokenizer, cfg)
        self.key = uuid.uuid4().hex
        self.locate = row_locator(dataset)  # names a row by its line in a JSON-lines file
        self.cut_from = CUT_CHARS_PER_TOKEN * cfg.sequence_len  # rows with a longer text: cut first
        self._cuts: list[int] | None = None  # the lengths to cut to, found when first needed
        self._splits = False  # the strategy makes several examples of a long row: never cut

    def __reduce__(self) -> tuple[Any, ...]:
        if self.key in _LIVE and _workers_fork():
            return _live_converter, (self.key,)
        return RowConverter, (self.strategy, self.dataset, self.cfg, self.tokenizer)

    def _row_error(self, row_index: int, message: str) -> FtkError:
        return FtkError(self.locate.describe(row_index, message))

    def __call__(self, batch: dict[str, list], indices: list[int]) -> pa.Table:
        out = _Output()
        columns = list(batch.items())
        to_features = self.to_features
        skip_invalid = self.cfg.invalid_rows != "raise"
        for position, row_index in enumerate(indices):
            row = {column: values[position] for column, values in columns}
            if not self._splits:
                longest = longest_text(row)
                if longest > self.cut_from and self._convert_cut(out, row, row_index, longest):
                    continue
            try:
                produced = to_features(row)
            except FtkError as exc:
                if not skip_invalid:
                    raise self._row_error(row_index, str(exc)) from exc
                out.drop(INVALID, self.locate.describe(row_index, str(exc)))
                continue
            # A strategy returns one example per row, or a list (e.g. a long document split in chunks).
            if isinstance(produced, list):
                for features in produced:
                    self._add_example(out, features, row_index)
            else:
                self._add_example(out, produced, row_index)
        return out.table()

    def _cut_lengths(self) -> list[int]:
        """The lengths to cut a long row's texts to, shortest first.

        For ``drop`` and ``raise``, first ``CUT_CHARS_PER_TOKEN`` characters a token, enough for
        any real text; then, for text made of the vocabulary's longest entries, enough whatever
        the text (``NORMALIZER_ROOM`` times ``sequence_len`` such entries).  ``truncate`` keeps
        the example's first ``sequence_len`` tokens, so every cut text must give that many: the
        second length only.
        """
        if self._cuts is None:
            limit = self.cfg.sequence_len
            sure = NORMALIZER_ROOM * limit * longest_token_chars(self.tokenizer)
            first = [] if self.cfg.excess_length_strategy == "truncate" else [self.cut_from]
            self._cuts = [*first, *([sure] if sure > self.cut_from else [])]
        return self._cuts

    def _convert_cut(self, out: _Output, row: dict[str, Any], row_index: int, longest: int) -> bool:
        """Convert ``row`` with its longest texts cut, when that settles it: False, convert it whole.

        The cut row settles it when it makes one example of more than twice ``sequence_len``
        tokens: the whole row makes one at least as long (more text, more tokens), over the
        limit whatever the rest, with the same first tokens.  Otherwise the whole row is
        converted: the cut text may not reach the example (a field the strategy does not use),
        the cut may be what makes the row invalid (JSON text cut short), or the strategy splits
        long rows into several examples (then no row of this source is cut again).
        """
        for chars in self._cut_lengths():
            if chars >= longest:
                break
            try:
                produced = self.to_features(cut_texts(row, chars))
            except Exception:  # the whole row decides, and raises its own error if it has one
                return False
            if isinstance(produced, list):
                if len(produced) != 1:
                    self._splits = len(produced) > 1
                    return False
                produced = produced[0]
            if len(produced["input_ids"]) > 2 * self.cfg.sequence_len:
                self._add_example(out, produced, row_index, cut=longest)
                return True
        return False

    def _add_example(
        self, out: _Output, features: dict[str, list[int]], row_index: int, cut: int = 0
    ) -> None:
        """Add one example of the row ``row_index``, applying the length policies; ``cut``: the
        length of the text cut before tokenizing (the example is the start of the row's)."""
        ids, labels = _as_list(features["input_ids"]), _as_list(features["labels"])
        mask = features.get("attention_mask")
        mask = [1] * len(ids) if mask is None or len(mask) == 0 else _as_list(mask)
        if not (len(ids) == len(labels) == len(mask)):
            raise self._row_error(
                row_index,
                f"strategy {self.dataset.type!r} returned {len(ids)} input_ids, {len(labels)} labels "
                f"and {len(mask)} attention_mask values",
            )
        limit = self.cfg.sequence_len
        problem = KEPT
        if len(ids) > limit:
            policy = self.cfg.excess_length_strategy
            if policy == "raise":
                count = (
                    f"at least {len(ids)} tokens (a text of {cut:,} characters)"
                    if cut
                    else f"{len(ids)} tokens"
                )
                raise self._row_error(
                    row_index, f"{count}, more than sequence_len {limit} (excess_length_strategy: raise)"
                )
            if policy == "drop":
                out.drop(TOO_LONG, str(row_index))  # named in _keep, for the first few only
                return
            ids, labels, mask = ids[:limit], labels[:limit], mask[:limit]
            problem = TRUNCATED
        trained = trained_count(labels)
        if not trained:
            out.drop(NOTHING_TRAINED, str(row_index))  # named in _keep, for the first few only
            return
        out.add(ids, labels, mask, trained, problem)


def _as_list(values: Any) -> list[int]:
    return values if type(values) is list else list(values)


def tokenizing_processes(cfg: FtkConfig, source_bytes: int) -> int | None:
    """``dataset_processes`` if set; else one process per ``BYTES_PER_PROCESS`` of the source, up to
    every core (None: tokenize in this process).

    The work grows with the text, not the row count (a dialogue is a hundred times a short
    question); a forked worker shares the strategy built here, so it starts in a few tenths of a
    second, which a megabyte of text repays (docs/benchmarks.md).
    """
    if cfg.dataset_processes is not None:
        return cfg.dataset_processes if cfg.dataset_processes > 1 else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = min(cores, source_bytes // BYTES_PER_PROCESS)
    return processes if processes > 1 else None


def source_bytes(raw: Dataset) -> int:
    """About how many bytes of arrow data the rows of ``raw`` hold (its table's share for those rows)."""
    table = raw.data
    return table.nbytes * len(raw) // max(table.num_rows, 1)


@contextmanager
def _tokenizing(converter: RowConverter, processes: int | None) -> Iterator[None]:
    """While a source is tokenized: no tokenizer threads; with workers, ``converter`` shared with them.

    Strategies tokenize a row's few texts per call, too little for the tokenizers library's thread
    pool: with it, one process spent a quarter more CPU for the same time (docs/benchmarks.md), and
    a forked worker would warn that it turned the pool off. ``TOKENIZERS_PARALLELISM`` set by the
    user is left as it is.
    """
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    if before is None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if processes:
        _LIVE[converter.key] = converter
        # Objects that exist now are left out of garbage collection while workers run: a collection
        # in a worker would otherwise write to every page holding one, copying it out of shared memory.
        gc.freeze()
    try:
        yield
    finally:
        if processes:
            gc.unfreeze()
            del _LIVE[converter.key]
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)


def tokenize_source(
    raw: Dataset,
    dataset: DatasetConfig,
    cfg: FtkConfig,
    tokenizer: PreTrainedTokenizerBase,
    registry: Registry,
    work_dir: Path | None = None,
) -> tuple[Dataset, SourceStats]:
    """Examples from one source's rows, and the counts of what was kept and dropped (and why).

    The examples are written under ``work_dir`` (memory-mapped from there), or kept in memory
    when it is None.
    """
    if dataset.max_samples is not None and dataset.max_samples < len(raw):
        raw = raw.select(range(dataset.max_samples))
    converter = RowConverter(resolve_strategy(registry, dataset.type), dataset, cfg, tokenizer)
    processes = tokenizing_processes(cfg, source_bytes(raw))
    target = None
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        target = str(work_dir / f"tokenized-{converter.key}.arrow")
    with _tokenizing(converter, processes):
        tokenized = raw.map(
            converter,
            batched=True,
            with_indices=True,
            remove_columns=raw.column_names,
            num_proc=processes,
            desc=f"Tokenizing {Path(dataset.path).name}",
            # ftk's own cache (keyed on data, tokenizer and settings) decides reuse; datasets would
            # otherwise hash the converter, config included, for a cache of its own.
            new_fingerprint=uuid.uuid4().hex,
            load_from_cache_file=False,
            cache_file_name=target,
            keep_in_memory=target is None,
        )
    return _keep(tokenized, dataset, len(raw), converter.locate)


def _keep(
    tokenized: Dataset, dataset: DatasetConfig, rows: int, locate: RowLocator
) -> tuple[Dataset, SourceStats]:
    """The kept examples (an indices mapping over ``tokenized``) and the counts, read as arrays."""
    problems = column_array(tokenized, "problem")
    counts = np.bincount(problems, minlength=NOTHING_TRAINED + 1)
    kept = problems <= TRUNCATED
    stats = SourceStats(path=dataset.path, split=dataset.split, rows=rows, kept=int(kept.sum()))
    stats.truncated = int(counts[TRUNCATED])
    stats.invalid = int(counts[INVALID])
    stats.too_long = int(counts[TOO_LONG])
    stats.nothing_trained = int(counts[NOTHING_TRAINED])
    # Dropped examples have no tokens: the sums over every row are the sums over the kept ones.
    stats.tokens = int(column_array(tokenized, "length").sum())
    stats.trained_tokens = int(column_array(tokenized, "trained").sum())
    if stats.invalid:
        first = np.flatnonzero(problems == INVALID)[:MAX_EXAMPLE_PROBLEMS]
        stats.invalid_examples = list(tokenized.select(first)["detail"])
    if stats.nothing_trained:
        stats.nothing_trained_examples = _where(tokenized, problems, NOTHING_TRAINED, locate)
    if stats.too_long:
        stats.too_long_examples = _where(tokenized, problems, TOO_LONG, locate)
    examples = tokenized.select_columns([*FEATURES, "length"])
    if stats.kept < len(tokenized):
        examples = examples.select(np.flatnonzero(kept), keep_in_memory=True)
    return examples, stats


def _where(tokenized: Dataset, problems: np.ndarray, problem: int, locate: RowLocator) -> list[str]:
    """Where the first few rows dropped for ``problem`` are (``data.jsonl:4``); their index is the detail."""
    first = np.flatnonzero(problems == problem)[:MAX_EXAMPLE_PROBLEMS]
    rows_of = dict.fromkeys(int(row) for row in tokenized.select(first)["detail"])
    return [locate.where(row) for row in rows_of]
