"""Writing files and folders so that no reader ever sees half of one.

A file is written to a temporary sibling and renamed over its final name; a folder is filled
under a temporary sibling name and renamed into place.  Both follow the user's umask (Python's
``mkstemp`` and ``mkdtemp`` create them private).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ftk.core.errors import FtkError

#: errno values that mean the disk (or the user's quota on it) is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How writers outside Python's file objects report it (safetensors: "... (os error 28)").
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")


class DiskFullError(FtkError):
    """A write failed because the disk is full: a message naming where and how much is needed, exit code 2."""


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


def follow_umask_tree(root: Path) -> None:
    """:func:`follow_umask` for every file and folder under ``root``: libraries write some private
    (safetensors creates its file 0600 and renames it into place)."""
    follow_umask(root, directory=True)
    for folder, folders, files in os.walk(root):
        for name in [*folders, *files]:
            path = Path(folder) / name
            if not path.is_symlink():  # a link's mode is its target's, which may be anywhere
                follow_umask(path, directory=name in folders)


def publish_directory(staged: Path, final: Path) -> None:
    """Move the complete folder ``staged`` to ``final``, replacing what is there.

    A folder already at ``final`` is moved aside first and deleted only once ``staged`` is in
    place; if that rename fails, it is put back.  What ``staged`` holds follows the umask.
    """
    follow_umask_tree(staged)
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


def publish_files(staged: Path, final: Path) -> None:
    """Move every entry of the complete folder ``staged`` into the folder ``final``, then remove ``staged``.

    Each file is replaced in one rename (a reader sees the old file or the new one, never half of
    one); a folder is replaced by :func:`publish_directory`.  What ``staged`` holds follows the umask.
    """
    follow_umask_tree(staged)
    final.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staged.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            publish_directory(entry, final / entry.name)
        else:
            os.replace(entry, final / entry.name)
    staged.rmdir()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, says the disk or the quota is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(current).lower() for text in _DISK_FULL_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes in the files under ``path`` (or of the file ``path``); 0 when nothing is there."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for item in path.rglob("*") if path.is_dir() else ():
        try:
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_size
        except OSError:  # removed while counting
            continue
    return total


def free_space(path: str | os.PathLike[str]) -> int | None:
    """Bytes free to this user on the filesystem holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def format_size(size: float) -> str:
    """``18.0 MiB``: a byte count in binary units, one decimal (whole bytes below 1 KiB)."""
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"
