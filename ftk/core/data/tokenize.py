"""Turn one source's rows into training examples with its strategy, applying the row policies.

Policies (top-level config keys):

* ``invalid_rows``: a row the strategy rejects (missing field, unknown role, ...) stops the run
  with the file, row and problem (``raise``, the default), or is skipped and counted (``skip``);
* ``excess_length_strategy``: an example longer than ``sequence_len`` is dropped and counted
  (``drop``, the default), cut to ``sequence_len`` (``truncate``), or stops the run (``raise``);
* an example with no trained token teaches nothing: it is always dropped and counted.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from ftk.core.config.loader import resolve_strategy
from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.errors import FtkError
from ftk.core.lm import IGNORE_INDEX
from ftk.core.registry import Registry

FEATURES = ("input_ids", "labels", "attention_mask")
MAX_EXAMPLE_PROBLEMS = 5
AUTO_PARALLEL_ROWS = 20_000

# Why an example was dropped; "" means kept.
KEPT, INVALID, TOO_LONG, NOTHING_TRAINED = "", "invalid", "too_long", "nothing_trained"


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

    @property
    def dropped(self) -> int:
        """Examples not kept, for any reason."""
        return self.invalid + self.too_long + self.nothing_trained


def _empty_output() -> dict[str, list]:
    return {name: [] for name in (*FEATURES, "length", "trained", "problem", "detail")}


def _append(
    out: dict[str, list], ids: list[int], labels: list[int], mask: list[int], problem: str, detail: str
):
    out["input_ids"].append(ids)
    out["labels"].append(labels)
    out["attention_mask"].append(mask)
    out["length"].append(len(ids))
    # labels[0] is never a target (position t predicts label t+1), so it does not count.
    out["trained"].append(sum(1 for label in labels[1:] if label != IGNORE_INDEX))
    out["problem"].append(problem)
    out["detail"].append(detail)


class RowConverter:
    """The batched ``datasets.map`` function for one source: strategy + policies, per row."""

    def __init__(self, dataset: DatasetConfig, cfg: FtkConfig, to_features: Any) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.to_features = to_features

    def _row_error(self, row_index: int, message: str) -> FtkError:
        return FtkError(f"{self.dataset.path}: row {row_index + 1}: {message}")

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out = _empty_output()
        for position, row_index in enumerate(indices):
            row = {column: values[position] for column, values in batch.items()}
            try:
                produced = self.to_features(row)
            except FtkError as exc:
                if self.cfg.invalid_rows == "raise":
                    raise self._row_error(row_index, str(exc)) from exc
                _append(out, [], [], [], INVALID, f"row {row_index + 1}: {exc}")
                continue
            # A strategy returns one example per row, or a list (e.g. a long document split in chunks).
            for features in produced if isinstance(produced, list) else [produced]:
                self._add_example(out, features, row_index)
        return out

    def _add_example(self, out: dict[str, list], features: dict[str, list[int]], row_index: int) -> None:
        ids, labels = list(features["input_ids"]), list(features["labels"])
        mask = list(features.get("attention_mask") or [1] * len(ids))
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
                raise self._row_error(
                    row_index,
                    f"{len(ids)} tokens, more than sequence_len {limit} (excess_length_strategy: raise)",
                )
            if policy == "drop":
                problem = TOO_LONG
            else:
                ids, labels, mask = ids[:limit], labels[:limit], mask[:limit]
                problem = "truncated"
        if problem != TOO_LONG and not any(label != IGNORE_INDEX for label in labels[1:]):
            problem = NOTHING_TRAINED
        _append(out, ids, labels, mask, problem, "")


def tokenizing_processes(cfg: FtkConfig, rows: int) -> int | None:
    """``dataset_processes`` if set; else every core for large sources, one process for small ones.

    Starting workers costs about two seconds (each receives the strategy and its tokenizer), so
    below ~20,000 rows one process is faster (docs/benchmarks.md).
    """
    if cfg.dataset_processes is not None:
        return cfg.dataset_processes if cfg.dataset_processes > 1 else None
    cores = os.cpu_count() or 1
    return cores if cores > 1 and rows >= AUTO_PARALLEL_ROWS else None


def tokenize_source(
    raw: Dataset,
    dataset: DatasetConfig,
    cfg: FtkConfig,
    tokenizer: PreTrainedTokenizerBase,
    registry: Registry,
) -> tuple[Dataset, SourceStats]:
    """Examples from one source's rows, and the counts of what was kept and dropped (and why)."""
    if dataset.max_samples is not None and dataset.max_samples < len(raw):
        raw = raw.select(range(dataset.max_samples))
    strategy = resolve_strategy(registry, dataset.type)
    converter = RowConverter(dataset, cfg, strategy.build(dataset, tokenizer, cfg))
    tokenized = raw.map(
        converter,
        batched=True,
        with_indices=True,
        remove_columns=raw.column_names,
        num_proc=tokenizing_processes(cfg, len(raw)),
        desc=f"Tokenizing {Path(dataset.path).name}",
        # ftk's own cache (keyed on data, tokenizer and settings) decides reuse; datasets would
        # otherwise hash the converter, config included, for a cache of its own.
        new_fingerprint=uuid.uuid4().hex,
        load_from_cache_file=False,
    )
    problems, lengths, trained = tokenized["problem"], tokenized["length"], tokenized["trained"]
    keep = [i for i, problem in enumerate(problems) if problem in (KEPT, "truncated")]
    stats = SourceStats(path=dataset.path, split=dataset.split, rows=len(raw), kept=len(keep))
    stats.invalid = problems.count(INVALID)
    stats.too_long = problems.count(TOO_LONG)
    stats.truncated = problems.count("truncated")
    stats.nothing_trained = problems.count(NOTHING_TRAINED)
    stats.tokens = sum(lengths[i] for i in keep)
    stats.trained_tokens = sum(trained[i] for i in keep)
    if stats.invalid:
        details = tokenized["detail"]
        stats.invalid_examples = [d for d, p in zip(details, problems, strict=True) if p == INVALID][
            :MAX_EXAMPLE_PROBLEMS
        ]
    return tokenized.select(keep).select_columns([*FEATURES, "length"]), stats
