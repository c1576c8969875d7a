"""From config to tokenized train/eval sets: load, tokenize per dataset, filter, split, cache.

The cache key covers everything that decides the result: each source's bytes, the strategy and
its settings, the tokenizer (vocabulary, special tokens, chat template), ``sequence_len``,
``train_on_inputs``, ``val_set_size``, the seed and the ftk version.  A hit is never stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from ftk import __version__
from ftk.core.config.loader import resolve_strategy
from ftk.core.config.schema import FtkConfig
from ftk.core.data.sources import load_source, source_fingerprint
from ftk.core.errors import FtkError
from ftk.core.registry import Registry

IGNORE_INDEX = -100
FEATURES = ("input_ids", "labels", "attention_mask")


@dataclass
class SourceStats:
    """What happened to one source's rows."""

    path: str
    rows: int = 0
    kept: int = 0
    too_long: int = 0
    nothing_trained: int = 0
    tokens: int = 0
    trained_tokens: int = 0


@dataclass
class PreparedData:
    """Tokenized train and eval sets, where they are cached and what preparing them did."""

    train: Dataset
    eval: Dataset | None
    cache_dir: Path
    from_cache: bool
    sources: list[SourceStats] = field(default_factory=list)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Digest of everything in the tokenizer that changes ids: vocab, merges, specials, template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    template = getattr(tokenizer, "chat_template", None)
    digest.update(json.dumps(template, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_key(cfg: FtkConfig, tokenizer_digest: str, source_digests: list[str]) -> str:
    """The cache directory name for this config's data."""
    settings = {
        "ftk": __version__,
        "datasets": [dataset.model_dump(mode="json") for dataset in cfg.datasets],
        "sources": source_digests,
        "tokenizer": tokenizer_digest,
        "keys": {
            key: getattr(cfg, key)
            for key in (
                "sequence_len",
                "train_on_inputs",
                "val_set_size",
                "seed",
                "chat_template",
                "chat_template_jinja",
            )
        },
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _tokenize_source(
    raw: Dataset, index: int, cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase, registry: Registry
) -> tuple[Dataset, SourceStats]:
    dataset = cfg.datasets[index]
    strategy = resolve_strategy(registry, dataset.type)
    to_features = strategy.build(dataset, tokenizer, cfg)
    stats = SourceStats(path=dataset.path, rows=len(raw))

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {
            "input_ids": [],
            "labels": [],
            "attention_mask": [],
            "length": [],
            "trained": [],
        }
        for position, row_index in enumerate(indices):
            row = {column: values[position] for column, values in batch.items()}
            try:
                produced = to_features(row)
            except FtkError as exc:
                raise FtkError(f"{dataset.path}: row {row_index + 1}: {exc}") from exc
            # A strategy returns one example per row, or a list (e.g. a long document split in chunks).
            for features in produced if isinstance(produced, list) else [produced]:
                ids, labels = features["input_ids"], features["labels"]
                if len(ids) != len(labels):
                    raise FtkError(
                        f"{dataset.path}: row {row_index + 1}: strategy {dataset.type!r} returned "
                        f"{len(ids)} input_ids but {len(labels)} labels"
                    )
                out["input_ids"].append(ids)
                out["labels"].append(labels)
                out["attention_mask"].append(features.get("attention_mask") or [1] * len(ids))
                out["length"].append(len(ids))
                out["trained"].append(sum(1 for label in labels if label != IGNORE_INDEX))
        return out

    tokenized = raw.map(
        convert,
        batched=True,
        with_indices=True,
        remove_columns=raw.column_names,
        num_proc=cfg.dataset_processes,
        desc=f"Tokenizing {Path(dataset.path).name}",
    )
    lengths, trained = tokenized["length"], tokenized["trained"]
    keep = [
        i for i, (n, t) in enumerate(zip(lengths, trained, strict=True)) if n <= cfg.sequence_len and t > 0
    ]
    stats.too_long = sum(1 for n in lengths if n > cfg.sequence_len)
    stats.nothing_trained = sum(
        1 for n, t in zip(lengths, trained, strict=True) if n <= cfg.sequence_len and t == 0
    )
    stats.kept = len(keep)
    stats.tokens = sum(lengths[i] for i in keep)
    stats.trained_tokens = sum(trained[i] for i in keep)
    return tokenized.select(keep).select_columns(list(FEATURES)), stats


def _split_eval(data: Dataset, cfg: FtkConfig) -> tuple[Dataset, Dataset | None]:
    if not cfg.val_set_size:
        return data, None
    size: float | int = cfg.val_set_size if cfg.val_set_size < 1 else int(cfg.val_set_size)
    if isinstance(size, int) and size >= len(data):
        raise FtkError(f"val_set_size: {size} rows asked for eval but only {len(data)} rows were kept")
    parts = data.train_test_split(test_size=size, seed=cfg.seed, shuffle=True)
    return parts["train"], parts["test"]


def _load_cached(directory: Path) -> PreparedData | None:
    meta = directory / "ftk_meta.json"
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    train = datasets.load_from_disk(str(directory / "train"))
    eval_set = datasets.load_from_disk(str(directory / "eval")) if (directory / "eval").is_dir() else None
    sources = [SourceStats(**item) for item in info["sources"]]
    return PreparedData(train, eval_set, directory, True, sources)


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Hide ``datasets``' own progress bars (loading, flattening, saving) for the duration."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def prepare_data(
    cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase, registry: Registry, use_cache: bool = True
) -> PreparedData:
    """Tokenized, filtered, shuffled train (and eval) data for ``cfg``, from the cache when valid."""
    with quiet_datasets():
        raws = [load_source(dataset, f"datasets[{i}]") for i, dataset in enumerate(cfg.datasets)]
    digests = [source_fingerprint(dataset, raw) for dataset, raw in zip(cfg.datasets, raws, strict=True)]
    directory = Path(cfg.dataset_prepared_path) / cache_key(cfg, tokenizer_fingerprint(tokenizer), digests)
    if use_cache:
        with quiet_datasets():
            cached = _load_cached(directory)
        if cached is not None:
            return cached

    parts, stats = [], []
    for index, raw in enumerate(raws):
        tokenized, source_stats = _tokenize_source(raw, index, cfg, tokenizer, registry)
        parts.append(tokenized)
        stats.append(source_stats)
    data = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(data) == 0:
        raise FtkError(
            "datasets: no rows left to train on "
            f"({sum(s.too_long for s in stats)} longer than sequence_len {cfg.sequence_len}, "
            f"{sum(s.nothing_trained for s in stats)} with no trained token)"
        )
    with quiet_datasets():
        data = data.shuffle(seed=cfg.seed).flatten_indices()
        train, eval_set = _split_eval(data, cfg)
        _save(directory, train, eval_set, stats)
    return PreparedData(train, eval_set, directory, False, stats)


def _save(directory: Path, train: Dataset, eval_set: Dataset | None, stats: list[SourceStats]) -> None:
    """Write the cache entry under a temporary name and rename it, so no reader sees half of it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        train.save_to_disk(str(staging / "train"))
        if eval_set is not None:
            eval_set.save_to_disk(str(staging / "eval"))
        meta = {"ftk": __version__, "sources": [asdict(s) for s in stats]}
        (staging / "ftk_meta.json").write_text(json.dumps(meta, indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
