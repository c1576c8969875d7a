"""The paths a config names, checked before any work: one rule for every one of them.

**A relative path is read from the working directory** (where ``ftk`` runs), as axolotl, the
shell and every Python tool read it: ``base_model``, ``tokenizer_config``, each dataset's
``path``, ``output_dir``, ``dataset_prepared_path`` and ``resume_from_checkpoint``.  When a
relative input is not there but is next to the config file, ftk does not guess which one was
meant: it stops and names both places.

``base_model`` and ``tokenizer_config`` are a local directory or a Hugging Face Hub id.  A value
that exists is a local path; one that cannot be a Hub id (it starts with ``./``, ``../``, ``/`` or
``~``, has more than one ``/``, or its first part is a local directory) is a missing local path,
reported as such instead of being sent to the Hub.  What is left is a Hub id; whether the Hub or
the cache has it is a question about the machine (``ftk.core.machine``).

A training ``output_dir`` must be empty, new or an earlier ftk run unless ``overwrite_output_dir``
(``ftk.core.run_dir``); a ``resume_from_checkpoint`` must hold files that load safely
(``ftk.core.checkpoints.invalid_file``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ftk.core import run_dir
from ftk.core.config.schema import FtkConfig

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

#: The file formats the data loader tells by extension (``ftk.core.data.sources``): such a name is a file.
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
#: Starts of a value that only a path has.
PATH_STARTS = ("/", "./", "../", "~", ".\\", "..\\")

#: What each purpose reads and writes (``ftk.core.lifecycle.Purpose``).  ``inference`` (eval,
#: generate) reads its data and adapter from the command, so only the model is checked for it.
READS_DATA = ("validate", "preprocess", "train")
WRITES_OUTPUT = ("validate", "train")


def is_hub_id(value: str) -> bool:
    """Whether ``value`` is shaped like a Hub repository id (``name`` or ``org/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def looks_like_path(value: str, config_dir: Path) -> bool:
    """Whether ``value`` can only mean a local path (see the module docstring); a URL (``s3://``) is not one."""
    if "://" in value:
        return False
    if value in (".", "..") or value.startswith(PATH_STARTS) or "\\" in value:
        return True
    if value.count("/") > 1 or value.endswith("/") or not is_hub_id(value):
        return True
    first, slash, _ = value.partition("/")
    return bool(slash) and (Path(first).is_dir() or (config_dir / first).is_dir())


def _here(value: str) -> Path:
    """Where ``value`` points from the working directory, absolute (for messages)."""
    return Path(os.path.abspath(value))


def _missing(what: str, value: str) -> str:
    """``no such directory: models/x (looked for /abs/models/x)``; an absolute path is shown once."""
    looked = "" if str(_here(value)) == value else f" (looked for {_here(value)})"
    return f"no such {what}: {value}{looked}"


def beside_config(value: str, config_dir: Path) -> str | None:
    """The message for a relative ``value`` missing from the working directory but found next to the config."""
    path = Path(value)
    if "://" in value or path.is_absolute() or path.exists():
        return None
    beside = Path(os.path.abspath(config_dir / path))
    if not beside.exists():
        return None
    return (
        f"{value} is not in the working directory ({_here(value)}) but is next to the config "
        f"({beside}); relative paths are read from the working directory: run ftk from "
        f"{os.path.abspath(config_dir)} or write the path as {beside}"
    )


def model_problem(value: str, config_dir: Path) -> str | None:
    """Why ``base_model`` (or ``tokenizer_config``) ``value`` names nothing loadable, when that is certain."""
    path = Path(value)
    if path.is_file():
        return f"{value} is a file; give the directory that holds config.json and the weights (or a Hub id)"
    if path.exists():
        return None
    return beside_config(value, config_dir) or (
        _missing("directory", value) if looks_like_path(value, config_dir) else None
    )


def dataset_problem(value: str, config_dir: Path) -> str | None:
    """Why a dataset ``path`` names nothing, when it is certainly meant as a local file or folder."""
    if Path(value).exists():
        return None
    if beside := beside_config(value, config_dir):
        return beside
    suffixes = [suffix.lower() for suffix in Path(value).suffixes]
    if looks_like_path(value, config_dir) or ("://" not in value and set(suffixes) & set(DATA_SUFFIXES)):
        return _missing("file or directory", value)
    return None  # a Hub dataset name: the data loader asks the Hub (or its cache) for it


def output_problem(value: str) -> str | None:
    """Why a directory cannot be created or written at ``value`` (output_dir, dataset_prepared_path)."""
    path = _here(value)
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a directory"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {path}: {existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "write in" if existing == path else f"create {path}: cannot write in"
        return f"cannot {what} {existing} (permission denied)"
    return None


def _same_place(first: str, second: str) -> bool:
    """Whether two paths name one directory (symbolic links followed)."""
    return _here(first).resolve() == _here(second).resolve()


def checkpoint_problem(value: str) -> str | None:
    """Why ``value`` cannot be resumed from (missing, not a complete checkpoint, a file in it not valid), or None."""
    from ftk.core import checkpoints

    path = Path(value)
    if not path.exists():
        return _missing("directory", value)
    if not checkpoints.is_complete(path):
        return (
            f"{value} is not a complete checkpoint (expected a checkpoint-N directory holding "
            f"{checkpoints.TRAINER_STATE_FILE})"
        )
    return checkpoints.invalid_file(path)


def _dataset_lists(cfg: FtkConfig) -> Iterable[tuple[Loc, Any]]:
    for key in ("datasets", "test_datasets"):
        for index, dataset in enumerate(getattr(cfg, key)):
            yield (key, index, "path"), dataset.path


def path_problems(cfg: FtkConfig, config_dir: Path, purpose: str) -> list[Problem]:
    """Every path of ``cfg`` that ``purpose`` uses and that cannot work, as (key path, message)."""
    problems: list[Problem] = []

    def add(loc: Loc, message: str | None) -> None:
        if message is not None:
            problems.append((loc, message))

    add(("base_model",), model_problem(cfg.base_model, config_dir))
    if cfg.tokenizer_config is not None:
        add(("tokenizer_config",), model_problem(cfg.tokenizer_config, config_dir))
    if purpose in READS_DATA:
        for loc, value in _dataset_lists(cfg):
            add(loc, dataset_problem(value, config_dir))
        add(("dataset_prepared_path",), output_problem(cfg.dataset_prepared_path))
    if purpose in WRITES_OUTPUT:
        unusable = output_problem(cfg.output_dir)
        add(("output_dir",), unusable)
        if Path(cfg.base_model).is_dir() and _same_place(cfg.output_dir, cfg.base_model):
            add(("output_dir",), "is the base_model directory; training would write over the base model")
        elif unusable is None:  # someone else's files in it (checked again under the run's lock)
            add(("output_dir",), run_dir.ownership_problem(cfg))
        if cfg.resume_from_checkpoint:
            add(("resume_from_checkpoint",), checkpoint_problem(cfg.resume_from_checkpoint))
    return problems
