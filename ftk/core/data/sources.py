"""Load one dataset source: a local file or folder, a saved ``datasets`` directory, or a Hub name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from ftk.core.config.schema import DatasetConfig
from ftk.core.errors import FtkError

EXTENSION_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}


def _builder_for(path: Path, dataset: DatasetConfig, where: str) -> str:
    if dataset.ds_type is not None:
        return dataset.ds_type
    builder = EXTENSION_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise FtkError(f"{where}.path: cannot tell the format of {str(path)!r}; set ds_type")
    return builder


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_source(dataset: DatasetConfig, where: str) -> Dataset:
    """The raw rows of one ``datasets:`` entry; ``where`` (e.g. ``datasets[0]``) prefixes errors."""
    path = Path(dataset.path).expanduser()
    try:
        if path.is_file():
            builder = _builder_for(path, dataset, where)
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        if path.is_dir() and _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, DatasetDict):
                if dataset.split not in loaded:
                    raise FtkError(
                        f"{where}.split: {dataset.split!r} not in {str(path)!r} (has {', '.join(loaded)})"
                    )
                return loaded[dataset.split]
            return loaded
        if not path.is_dir() and (
            path.suffix.lower() in EXTENSION_BUILDERS or dataset.path.startswith((".", "/", "~"))
        ):
            raise FtkError(f"{where}.path: no such file or directory: {dataset.path!r}")
        # A data folder and a Hub dataset name take the same road: datasets resolves both.
        return datasets.load_dataset(
            str(path) if path.is_dir() else dataset.path,
            name=dataset.name,
            data_files=dataset.data_files,
            split=dataset.split,
        )
    except FtkError:
        raise
    except Exception as exc:  # datasets raises many types; all mean "this source cannot be read"
        cause = exc.__cause__ if isinstance(exc, datasets.exceptions.DatasetGenerationError) else exc
        raise FtkError(
            f"{where}.path: cannot load {dataset.path!r}: {type(cause).__name__}: {cause}"
        ) from exc


def source_fingerprint(dataset: DatasetConfig, loaded: Dataset) -> str:
    """A digest that changes whenever the source's content changes.

    Local files and folders are hashed byte for byte; for Hub datasets, ``datasets``' own
    fingerprint of the downloaded files stands in.
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
        digest.update(f"hub:{dataset.path}:{dataset.name}:{dataset.split}:{loaded._fingerprint}".encode())
    return digest.hexdigest()
