"""The run directory (``output_dir``): which ftk run it holds, and the lock a training run holds on it.

An ftk run directory carries a marker, ``ftk_run.json``, written (atomically, by the main process)
when a run has its data ready and before its model is loaded: the run's id and lineage (the runs
it resumed, see :class:`ftk.core.checkpoints.Lineage`), the ftk version, a digest of the resolved
config, the base model and when it started.  A folder written by an ftk from before the marker is
known by its ``ftk_config.yaml``.

``ftk train`` writes only into an empty (or new) folder, an earlier ftk run, or, with
``overwrite_output_dir: true`` (``ftk train --overwrite``), any folder: a non-empty folder of
someone else's files is refused before any work (:func:`ownership_problem`, in validation and
again under the lock).  While it trains, the main process holds an exclusive lock on
``<output_dir>/.ftk-run.lock`` (:func:`hold`), so a second run on the same folder stops at once,
naming the first.  A run that stops before its marker is written leaves nothing behind: not the
lock file, not the folder it created.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftk.core import checkpoints
from ftk.core.files import atomic_write_text
from ftk.core.locks import exclusive_lock

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig

#: The marker of an ftk run directory.
RUN_MARKER = "ftk_run.json"
#: The lock file a training run holds for its whole length (it stays in place, empty, afterwards).
LOCK_NAME = ".ftk-run.lock"
#: The resolved config every ftk run saves at its end; marks a run of an ftk from before the marker.
RESOLVED_CONFIG_NAME = "ftk_config.yaml"
#: Files operating systems put in any folder a user opens: never counted as someone's work.
SYSTEM_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
#: How many of the foreign entries an error names.
SHOWN = 3


@dataclass(frozen=True)
class RunInfo:
    """What the marker of a run directory says (``run_id`` None: a run from before the marker)."""

    run_id: str | None
    lineage: tuple[str, ...] = ()
    created: str | None = None
    ftk_version: str | None = None
    base_model: str | None = None

    def describe(self) -> str:
        """``ftk run 3f9c0a1b2c4d (started 2026-12-07 21:40:02)``, or what of it is known."""
        if self.run_id is None:
            return "an earlier ftk run (from before run markers)"
        when = f" (started {self.created})" if self.created else ""
        return f"ftk run {self.run_id}{when}"


def read_run(directory: str | os.PathLike[str]) -> RunInfo | None:
    """The ftk run ``directory`` holds: its marker, or a marker-less earlier run; None when it holds none."""
    path = Path(directory)
    marker = path / RUN_MARKER
    if marker.is_file():
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = None
        lineage = checkpoints.lineage_from_json(info)
        if isinstance(info, dict) and lineage is not None:
            return RunInfo(
                lineage.run_id,
                lineage.ids,
                _text(info.get("created")),
                _text(info.get("ftk_version")),
                _text(info.get("base_model")),
            )
        return RunInfo(None)  # a damaged marker is still ftk's
    if (path / RESOLVED_CONFIG_NAME).is_file():
        return RunInfo(None)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def last_lineage(directory: str | os.PathLike[str]) -> checkpoints.Lineage | None:
    """The lineage of the last run started in ``directory`` (from its marker), or None."""
    info = read_run(directory)
    if info is None or info.run_id is None:
        return None
    return checkpoints.Lineage(info.run_id, tuple(item for item in info.lineage if item != info.run_id))


def origin(directory: str | os.PathLike[str]) -> str | None:
    """Which ftk run wrote the model in ``directory`` (a run's output_dir or one of its checkpoints), or None."""
    path = Path(directory)
    info = read_run(path)
    if info is not None and info.run_id is not None:
        return info.describe()
    marker = checkpoints.read_marker(path)
    if marker is not None:
        return f"ftk run {marker.run_id}"
    return None


def _is_own(entry: Path, also_own: Iterable[Path]) -> bool:
    if entry.name == LOCK_NAME or entry.name in SYSTEM_LITTER or checkpoints.is_staging_leftover(entry):
        return True
    return any(entry == own for own in also_own)


def foreign_entries(directory: str | os.PathLike[str], also_own: Iterable[Path] = ()) -> list[str]:
    """The names in ``directory`` that ftk did not put there, sorted (its lock, staging leftovers and ``also_own`` aside)."""
    path = Path(directory)
    if not path.is_dir():
        return []
    owned = [Path(os.path.abspath(item)) for item in also_own]
    root = Path(os.path.abspath(path))
    return sorted(entry.name for entry in root.iterdir() if not _is_own(entry, owned))


def _own_entries(cfg: FtkConfig) -> list[Path]:
    """What of ``output_dir`` the config itself puts there: the data cache, when it lies inside."""
    root = Path(os.path.abspath(cfg.output_dir))
    cache = Path(os.path.abspath(cfg.dataset_prepared_path))
    if cache != root and root in cache.parents:
        return [root / cache.relative_to(root).parts[0]]
    return []


def ownership_problem(cfg: FtkConfig) -> str | None:
    """Why training may not write into ``cfg.output_dir``: a non-empty folder that is no ftk run, or None.

    An empty or missing folder, an earlier ftk run, and ``overwrite_output_dir: true`` are fine.
    """
    path = Path(cfg.output_dir)
    if cfg.overwrite_output_dir or not path.is_dir() or read_run(path) is not None:
        return None
    foreign = foreign_entries(path, _own_entries(cfg))
    if not foreign:
        return None
    shown = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
    return (
        f"{path} is not empty and holds no ftk run ({shown}); training would write over such files: "
        "choose an empty or new output_dir, or set overwrite_output_dir: true (ftk train --overwrite) "
        "to train into it anyway"
    )


def config_digest(cfg: FtkConfig) -> str:
    """The SHA-256 of the resolved config (defaults filled in), as ``ftk_config.yaml`` holds it."""
    from ftk.core.config.loader import dump_config

    text = json.dumps(dump_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_run_marker(
    directory: str | os.PathLike[str], cfg: FtkConfig, lineage: checkpoints.Lineage, resumed_from: Path | None
) -> Path:
    """Write ``ftk_run.json`` for the run of ``lineage`` into ``directory`` (atomically)."""
    from ftk import __version__

    info = {
        **lineage.as_json(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ftk_version": __version__,
        "config_sha256": config_digest(cfg),
        "base_model": cfg.base_model,
        "resumed_from": str(resumed_from) if resumed_from is not None else None,
    }
    return atomic_write_text(Path(directory) / RUN_MARKER, json.dumps(info, indent=2) + "\n")


@dataclass
class HeldRunDir:
    """``output_dir`` while a run holds it (``locked``: this process holds the lock, the main one)."""

    path: Path
    locked: bool
    #: Set once the run marker is written: from then on the run has written into the folder.
    marked: bool = False
    _created: list[Path] = field(default_factory=list)

    def mark(self, cfg: FtkConfig, lineage: checkpoints.Lineage, resumed_from: Path | None) -> None:
        """Write the run marker (main process only); the run now owns what it writes here."""
        if self.locked:
            write_run_marker(self.path, cfg, lineage, resumed_from)
        self.marked = True


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist, deepest first."""
    missing = []
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


@contextlib.contextmanager
def hold(output_dir: str | os.PathLike[str], primary: bool = True) -> Iterator[HeldRunDir]:
    """Hold ``output_dir`` for a run: its exclusive lock when ``primary`` (the main process).

    Another run holding it raises :class:`ftk.core.locks.LockHeld` naming that process.  If the
    run ends before :meth:`HeldRunDir.mark`, the lock file and the folders this call created are
    removed again (nothing was written there).
    """
    path = Path(output_dir)
    if not primary:
        yield HeldRunDir(path, locked=False)
        return
    created = _missing_parents(path)
    lock = path / LOCK_NAME
    lock_existed = lock.exists()
    held = HeldRunDir(path, locked=True, _created=created)
    try:
        with exclusive_lock(lock, f"output_dir {path}"):
            try:
                yield held
            finally:
                if not held.marked and not lock_existed:
                    lock.unlink(missing_ok=True)  # still held: a racing run fails or locks a new file
    finally:
        if not held.marked:
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only while empty
