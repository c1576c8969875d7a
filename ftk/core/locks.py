"""Exclusive locks held while a run trains or a cache entry is written, naming their holder.

A lock is ``fcntl.flock`` on a small file that normally stays in place; a holder that removes it
is safe too, as a waiter checks, once locked, that it holds the file now at the path.  The holder writes its process
id, host and start time into the file, so that a process that finds the lock taken can say who
holds it.  The operating system releases the lock when the holder exits, however it exits: a
killed run leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ftk.core.errors import FtkError


class LockHeld(FtkError):
    """Another process holds the lock: says which one (pid, host, since when)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as it wrote itself into the lock file."""

    pid: int | None
    host: str | None
    since: str | None

    def describe(self) -> str:
        """``process 4242 on gpu-07 (since 2026-12-07 21:40:02)``, or what of it is known."""
        if self.pid is None:
            return "another process"
        where = f" on {self.host}" if self.host else ""
        when = f" (since {self.since})" if self.since else ""
        return f"process {self.pid}{where}{when}"


def read_holder(path: Path) -> Holder:
    """The holder recorded in the lock file ``path`` (unknown fields None)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    pid = info.get("pid")
    return Holder(pid if isinstance(pid, int) else None, info.get("host"), info.get("since"))


def _record_holder(handle: int) -> None:
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
    os.ftruncate(handle, 0)
    os.pwrite(handle, text.encode("utf-8"), 0)


#: How often a lock is taken again when its file was removed meanwhile, before giving up.
_REOPENS = 100


def _open_locked(path: Path, what: str, wait: bool) -> int:
    """A descriptor of the file at ``path``, locked.

    A holder may remove the lock file (a run that fails before writing anything removes what it
    made): a process that was waiting then holds the lock of a file no longer at ``path``.  So once
    locked, the file is compared with the one at ``path``, and on a mismatch the lock is taken again.
    """
    for _ in range(_REOPENS):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # its folder was removed between the two calls
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            held = os.fstat(handle)
            current = os.stat(path)
        except BlockingIOError:
            os.close(handle)
            raise LockHeld(
                f"{what} is in use by {read_holder(path).describe()}; wait for it to finish"
            ) from None
        except FileNotFoundError:
            os.close(handle)
            continue
        except BaseException:
            os.close(handle)
            raise
        if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
            return handle
        os.close(handle)
    raise OSError(f"the lock file was removed {_REOPENS} times while waiting for it")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], what: str, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on the file ``path`` (created, following the umask) for the ``with`` block.

    ``what`` names the locked thing in the error (``output_dir /runs/a``).  With ``wait`` the
    call blocks until the holder is done; without it, a held lock raises :class:`LockHeld` at once.
    """
    path = Path(path)
    handle = _open_locked(path, what, wait)
    try:
        _record_holder(handle)
        try:
            yield path
        finally:
            os.ftruncate(handle, 0)
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)
