"""The tokenized-data cache: content-keyed entries, each written once and never changed in place.

Under ``dataset_prepared_path``:

* ``<key>/`` is a complete entry.  It appears in one rename of a folder filled elsewhere, and what
  makes it complete is its meta file (written last), so a folder without one is never read.
* ``.locks/<key>.lock`` is the lock of that key (``ftk.core.locks``).  A process that finds no
  complete entry takes it, waiting for another writer of the same key, and then looks again: the
  entry that writer published is reused, not written twice.  Lock files stay (a few bytes; empty
  unless held), except after a failed first run, which leaves no cache folder at all.
* ``.<key>.tmp-XXXXXXXX/`` is a writer's staging folder: the loaded sources (``datasets``' own
  cache of them), the tokenized rows, then the entry, renamed to ``<key>`` when complete.  Only the
  lock's holder writes one, so a staging folder of a key found by the next holder is a killed
  writer's, and is deleted.
* ``.<key>.old-XXXXXXXX/``: an entry set aside to be deleted, in one rename, when one is published
  in its place (``ftk preprocess --no-cache``, or a folder without its meta file or that cannot be
  read).

Readers take no lock: a complete entry never changes.  The one exception is ``--no-cache``, which
replaces the entry: a reader that already opened its files keeps reading them (deleting a file
does not take it from a process that has it open), and one that finds the entry gone or half read
goes the locked way and reads the new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ftk.core.errors import FtkError, say
from ftk.core.files import fsync_tree, staging_directory
from ftk.core.locks import LockHeld, exclusive_lock, read_holder

META_FILE = "ftk_meta.json"
LOCKS = ".locks"

T = TypeVar("T")


def lock_file(root: Path, key: str) -> Path:
    """The lock file of the entry ``key`` under the cache folder ``root``."""
    return root / LOCKS / f"{key}.lock"


@contextlib.contextmanager
def entry_lock(path: Path, what: str) -> Iterator[Path]:
    """Hold the lock file ``path``, waiting for its holder (and saying so) if it is taken."""
    with contextlib.ExitStack() as stack:
        try:
            try:
                stack.enter_context(exclusive_lock(path, what, wait=False))
            except LockHeld:
                say(f"note: {what} is being written by {read_holder(path).describe()}; waiting for it")
                stack.enter_context(exclusive_lock(path, what, wait=True))
        except OSError as exc:
            raise FtkError(
                f"dataset_prepared_path: cannot create or lock {path}: {exc.strerror or exc}"
            ) from exc
        yield path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale(root: Path, key: str) -> list[Path]:
    """Delete the staging and set-aside folders of ``key`` (call with its lock held: they are a dead writer's)."""
    stale = sorted([*root.glob(f".{key}.tmp-*"), *root.glob(f".{key}.old-*")])
    for item in stale:
        _remove(item)
    return stale


def _read(read: Callable[[Path], T | None], entry: Path) -> T | None:
    """``read(entry)``, or None when the entry is missing, incomplete or cannot be read."""
    try:
        return read(entry)
    except Exception:  # gone mid-read (replaced by --no-cache), or damaged: the locked way decides
        return None


def _publish(staging: Path, entry: Path) -> None:
    """Rename the complete ``staging`` to ``entry``; a folder there is set aside first, then deleted."""
    aside = None
    if os.path.lexists(entry):
        aside = entry.with_name(f".{entry.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(entry, aside)
    os.rename(staging, entry)
    if aside is not None:
        _remove(aside)


def _remove_new_root(root: Path, lock: Path) -> None:
    """After a failed first run: remove ``root`` if it holds nothing but this key's lock file."""
    try:
        only_locks = [item.name for item in root.iterdir()] == [LOCKS]
        if only_locks and [item.name for item in lock.parent.iterdir()] == [lock.name]:
            lock.unlink()  # safe while held: a process waiting on it locks again (ftk.core.locks)
            lock.parent.rmdir()
            root.rmdir()
    except OSError:  # another writer came meanwhile: its files stay, and so does the folder
        pass


def get_or_build(
    root: Path,
    key: str,
    read: Callable[[Path], T | None],
    build: Callable[[Path], None],
    reuse: bool = True,
) -> tuple[T, bool]:
    """The entry ``key`` under ``root`` as ``read`` returns it, and whether it was reused.

    ``read(folder)`` returns None for a folder without its meta file.  ``build(staging)`` writes a
    complete entry into the empty folder ``staging`` (its scratch files removed).  With ``reuse``
    False the entry is built again and replaces the one there.
    """
    entry = root / key
    if reuse:
        found = _read(read, entry)
        if found is not None:
            return found, True
    root_is_new = not root.exists()
    lock = lock_file(root, key)
    with entry_lock(lock, f"data cache entry {entry}"):
        try:
            remove_stale(root, key)
            if reuse:
                found = _read(read, entry)  # written by the writer this one waited for
                if found is not None:
                    return found, True
            staging = staging_directory(entry)
            try:
                build(staging)
                fsync_tree(staging)
                _publish(staging, entry)
            except BaseException:
                _remove(staging)
                raise
            written = read(entry)
            assert written is not None, f"{entry}: published without its meta file"
            return written, False
        except BaseException:
            if root_is_new:
                _remove_new_root(root, lock)
            raise
