"""From config to tokenized train/eval sets: load, tokenize per dataset, filter, mix, split, cache.

The cache key covers everything that decides the result: each source's bytes, each dataset entry
(strategy and its settings), the code of the file that defines each strategy, the tokenizer (vocabulary, special tokens, chat template), every
top-level key that changes tokens, labels or the split, and the ftk version.  A hit is never stale.
The cache entry is a folder with ``train`` (and ``eval``) saved by ``datasets``, so it loads with
``datasets.load_from_disk``, and ``ftk_meta.json`` with the counts; how entries are written, locked
and replaced is ``ftk.core.data.cache``'s part.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from ftk import __version__
from ftk.core.config.loader import resolve_strategy
from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.data.bins import bin_shapes
from ftk.core.data.cache import META_FILE, get_or_build
from ftk.core.data.columns import column_array
from ftk.core.data.drops import check_rows_left, dropped_note
from ftk.core.data.sources import load_source, source_fingerprint
from ftk.core.data.tokenize import SourceStats, tokenize_source
from ftk.core.errors import FtkError
from ftk.core.registry import Registry, Strategy

#: Top-level keys that change the prepared data (besides the dataset entries themselves).
DATA_KEYS = (
    "sequence_len",
    "excess_length_strategy",
    "invalid_rows",
    "train_on_inputs",
    "val_set_size",
    "shuffle_merged_datasets",
    "seed",
    "chat_template",
    "chat_template_jinja",
    "sample_packing",
    "eval_sample_packing",
)


@dataclass
class PreparedData:
    """Tokenized train and eval sets, where they are cached and what preparing them did."""

    train: Dataset
    eval: Dataset | None
    cache_dir: Path
    from_cache: bool
    sources: list[SourceStats] = field(default_factory=list)
    eval_sources: list[SourceStats] = field(default_factory=list)
    packing: dict | None = None  # {"bins", "efficiency"} of the first epoch, when packing

    def packing_note(self) -> str:
        """``; packed N examples into M rows of L tokens, E% real tokens``, or "" when not packed."""
        if not self.packing:
            return ""
        p = self.packing
        return (
            f"; packed {p['rows']:,} examples into {p['bins']:,} rows of {p['capacity']:,} tokens, "
            f"{p['efficiency']:.2%} real tokens"
        )

    def dropped_note(self) -> str:
        """``; dropped N rows: 2 with nothing to train (data.jsonl:4, ...), 1 too long``, or ""."""
        return dropped_note([*self.sources, *self.eval_sources])

    def summary(self) -> dict:
        """Counts as plain data (for ``ftk preprocess --json`` and the cache's metadata)."""
        return {
            "train_rows": len(self.train),
            "eval_rows": len(self.eval) if self.eval is not None else 0,
            "tokens": sum(s.tokens for s in self.sources),
            "trained_tokens": sum(s.trained_tokens for s in self.sources),
            "cache_dir": str(self.cache_dir),
            "from_cache": self.from_cache,
            "datasets": [asdict(s) for s in self.sources],
            "test_datasets": [asdict(s) for s in self.eval_sources],
            "packing": self.packing,
        }


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Digest of everything in the tokenizer that changes ids: vocab, merges, specials, template."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    template = getattr(tokenizer, "chat_template", None)
    digest.update(json.dumps(template, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def strategy_fingerprint(strategy: Strategy) -> str:
    """Digest of the source of the strategy's code, as edited: every module of the package that
    defines its build function (so the helper modules a strategy is spread over count too), or
    that function's file alone when it is a top-level module.

    A strategy with no readable source (compiled, or defined interactively) gets its name only.
    """
    try:
        path = inspect.getsourcefile(inspect.unwrap(strategy.build))
    except TypeError:
        path = None
    if path is None or not Path(path).is_file():
        return f"{strategy.name}:no-source"
    source = Path(path)
    files = sorted(source.parent.rglob("*.py")) if (source.parent / "__init__.py").is_file() else [source]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(source.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def cache_key(
    cfg: FtkConfig,
    tokenizer_digest: str,
    source_digests: list[str],
    strategy_digests: list[str] | None = None,
) -> str:
    """The cache folder name for this config's data."""
    settings = {
        "ftk": __version__,
        "strategy_code": strategy_digests or [],
        "datasets": [dataset.model_dump(mode="json") for dataset in cfg.datasets],
        "test_datasets": [dataset.model_dump(mode="json") for dataset in cfg.test_datasets],
        "sources": source_digests,
        "tokenizer": tokenizer_digest,
        "keys": {key: getattr(cfg, key) for key in (*DATA_KEYS, *cfg.marked_keys("changes_data"))},
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


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


def _mix(
    raws: list[Dataset],
    entries: list[DatasetConfig],
    key: str,
    cfg: FtkConfig,
    tokenizer: PreTrainedTokenizerBase,
    registry: Registry,
    work_dir: Path,
) -> tuple[Dataset | None, list[SourceStats]]:
    parts, stats = [], []
    for raw, entry in zip(raws, entries, strict=True):
        tokenized, source_stats = tokenize_source(raw, entry, cfg, tokenizer, registry, work_dir)
        parts.append(tokenized)
        stats.append(source_stats)
        check_rows_left(f"{key}[{len(stats) - 1}]", source_stats, cfg)
    if not parts:
        return None, stats
    data = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(data) == 0:
        raise FtkError(
            f"{key}: no rows left to use: "
            + ", ".join(
                f"{sum(getattr(s, reason) for s in stats)} {reason.replace('_', ' ')}"
                for reason in ("invalid", "too_long", "nothing_trained")
            )
        )
    return data, stats


def packing_summary(lengths: Sequence[int] | np.ndarray, cfg: FtkConfig) -> dict:
    """Rows, bins and efficiency (real tokens over token slots) of every epoch's packing.

    The bins' shapes depend on the lengths alone, so the count is the same on every epoch.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    bins = len(bin_shapes(lengths, cfg.sequence_len))
    return {
        "rows": len(lengths),
        "bins": bins,
        "capacity": cfg.sequence_len,
        "efficiency": round(float(lengths.sum()) / (bins * cfg.sequence_len), 6) if bins else 0.0,
    }


def _split_eval(data: Dataset, cfg: FtkConfig, work_dir: Path) -> tuple[Dataset, Dataset | None]:
    if not cfg.val_set_size:
        return data, None
    size: float | int = cfg.val_set_size if cfg.val_set_size < 1 else int(cfg.val_set_size)
    if isinstance(size, int) and size >= len(data):
        raise FtkError(f"val_set_size: {size} rows asked for eval but only {len(data)} rows were kept")
    parts = data.train_test_split(
        test_size=size,
        seed=cfg.seed,
        shuffle=True,
        train_indices_cache_file_name=str(work_dir / "train-indices.arrow"),
        test_indices_cache_file_name=str(work_dir / "eval-indices.arrow"),
    )
    return parts["train"], parts["test"]


def _load_cached(directory: Path) -> PreparedData | None:
    """The entry in ``directory``, or None when it has no meta file (not a complete entry)."""
    meta = directory / META_FILE
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    with quiet_datasets():
        train = datasets.load_from_disk(str(directory / "train"))
        eval_set = datasets.load_from_disk(str(directory / "eval")) if (directory / "eval").is_dir() else None
    sources = [SourceStats(**item) for item in info["datasets"]]
    eval_sources = [SourceStats(**item) for item in info["test_datasets"]]
    return PreparedData(train, eval_set, directory, True, sources, eval_sources, info.get("packing"))


def _is_local(dataset: DatasetConfig) -> bool:
    return Path(dataset.path).expanduser().exists()


def prepare_data(
    cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase, registry: Registry, use_cache: bool = True
) -> PreparedData:
    """Tokenized, filtered, mixed train (and eval) data for ``cfg``, from the cache when valid.

    A local source is known by its bytes: it is loaded only when the entry has to be written, with
    ``datasets``' copy of it inside the staging folder (deleted with it).  A Hub dataset is loaded
    first, as its digest is ``datasets``' fingerprint of it.  With ``use_cache`` False the data
    are tokenized again and replace the entry (``ftk.core.data.cache``).
    """
    entries = [*cfg.datasets, *cfg.test_datasets]
    wheres = [f"datasets[{i}]" for i in range(len(cfg.datasets))]
    wheres += [f"test_datasets[{i}]" for i in range(len(cfg.test_datasets))]
    with quiet_datasets():
        hub = {i: load_source(d, wheres[i]) for i, d in enumerate(entries) if not _is_local(d)}
    digests = [source_fingerprint(d, hub.get(i)) for i, d in enumerate(entries)]
    strategies = [strategy_fingerprint(resolve_strategy(registry, d.type)) for d in entries]
    key = cache_key(cfg, tokenizer_fingerprint(tokenizer), digests, strategies)
    root = Path(cfg.dataset_prepared_path)

    def build(staging: Path) -> None:
        with quiet_datasets():
            raws = [
                hub[i] if i in hub else load_source(d, wheres[i], cache_dir=staging / "sources")
                for i, d in enumerate(entries)
            ]
        _build(cfg, tokenizer, registry, raws, staging, root / key)

    data, reused = get_or_build(root, key, _load_cached, build, reuse=use_cache)
    data.from_cache = reused
    return data


def _build(
    cfg: FtkConfig,
    tokenizer: PreTrainedTokenizerBase,
    registry: Registry,
    raws: list[Dataset],
    staging: Path,
    entry: Path,
) -> None:
    """Tokenize, filter, mix and split ``raws`` (the sources of ``cfg``) into a complete entry in ``staging``.

    ``entry`` is where it will be published (its meta file names it).  The scratch files
    (``sources``: ``datasets``' copy of the local sources; ``work``: the tokenized rows) are deleted
    once the entry is saved.
    """
    work = staging / "work"
    train_raws, eval_raws = raws[: len(cfg.datasets)], raws[len(cfg.datasets) :]
    train, stats = _mix(train_raws, cfg.datasets, "datasets", cfg, tokenizer, registry, work)
    eval_set, eval_stats = _mix(eval_raws, cfg.test_datasets, "test_datasets", cfg, tokenizer, registry, work)
    assert train is not None  # the schema requires at least one dataset
    with quiet_datasets():
        if cfg.shuffle_merged_datasets:
            train = train.shuffle(seed=cfg.seed, keep_in_memory=True)
        if eval_set is None:
            train, eval_set = _split_eval(train, cfg, work)
        packing = packing_summary(column_array(train, "length"), cfg) if cfg.sample_packing else None
        _save(PreparedData(train, eval_set, entry, False, stats, eval_stats, packing), staging)
    del train, eval_set, raws, train_raws, eval_raws
    for scratch in (work, staging / "sources"):
        shutil.rmtree(scratch, ignore_errors=True)


def _save(prepared: PreparedData, staging: Path) -> None:
    """Write the train and eval sets (their indices mappings applied) and the counts into ``staging``."""
    prepared.train.save_to_disk(str(staging / "train"))
    if prepared.eval is not None:
        prepared.eval.save_to_disk(str(staging / "eval"))
    meta = {"ftk": __version__, **prepared.summary()}
    (staging / META_FILE).write_text(json.dumps(meta, indent=2))
