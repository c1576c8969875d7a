"""Writing files and folders so that no reader ever sees half of one.

A file is written to a temporary sibling and renamed over its final name; a folder is filled
under a temporary sibling name and renamed into place.  Both follow the user's umask (Python's
``mkstemp`` and ``mkdtemp`` create them private).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path, directory: bool) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would have given it."""
    path.chmod((0o777 if directory else 0o666) & ~_umask())


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Create or replace the file ``path`` with what ``write(handle)`` writes, in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
        follow_umask(Path(temporary), directory=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    return atomic_write(path, lambda out: out.write(text.encode("utf-8")))


def staging_directory(final: Path) -> Path:
    """A new empty folder beside ``final`` (hidden, uniquely named) to fill before :func:`publish_directory`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    follow_umask(staging, directory=True)
    return staging


def fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` to disk, so that a rename publishes complete files."""
    for item in path.rglob("*"):
        if item.is_file():
            with item.open("rb") as handle:
                os.fsync(handle.fileno())


def publish_directory(staged: Path, final: Path) -> None:
    """Move the complete folder ``staged`` to ``final``, replacing what is there.

    A folder already at ``final`` is moved aside first and deleted only once ``staged`` is in
    place; if that rename fails, it is put back.
    """
    if final.is_dir() and not any(final.iterdir()):
        final.rmdir()
    if not final.exists():
        os.replace(staged, final)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, aside / final.name)
    try:
        os.replace(staged, final)
    except OSError:
        os.replace(aside / final.name, final)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
