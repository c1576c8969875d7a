"""Checkpoint directories: written under a temporary name, renamed when complete, found again on resume.

A checkpoint is ``<output_dir>/checkpoint-<step>``.  It is first written as
``<output_dir>/.incomplete-checkpoint-<step>/checkpoint-<step>`` and moved into place by one
``os.replace`` when every file is on disk, so a process killed while saving leaves at most an
``.incomplete-*`` directory, which nothing mistakes for a checkpoint and the next run removes.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ftk.core.files import fsync_tree, publish_directory

CHECKPOINT_PREFIX = "checkpoint"
STAGING_PREFIX = ".incomplete-"
#: The file Trainer writes last into a checkpoint; a directory without it is not a checkpoint.
TRAINER_STATE_FILE = "trainer_state.json"

_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint saved after optimizer step ``step``."""
    return f"{CHECKPOINT_PREFIX}-{step}"


def staging_root(output_dir: str | os.PathLike[str], step: int) -> Path:
    """The temporary parent directory a checkpoint is written into before it is renamed."""
    return Path(output_dir) / f"{STAGING_PREFIX}{checkpoint_name(step)}"


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a finished checkpoint (right name, trainer state written)."""
    return (
        path.is_dir()
        and _CHECKPOINT_NAME.match(path.name) is not None
        and (path / TRAINER_STATE_FILE).is_file()
    )


def complete_checkpoints(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The finished checkpoints in ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if is_complete(path)]
    return sorted(found, key=lambda path: int(path.name.rpartition("-")[2]))


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The finished checkpoint with the highest step, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def remove_incomplete(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete what an interrupted save left behind; returns the directories removed."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    leftovers = [path for path in root.iterdir() if path.is_dir() and path.name.startswith(STAGING_PREFIX)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def publish(staged: Path, final: Path) -> None:
    """Move a fully written checkpoint from its staging folder to its final name, atomically.

    A checkpoint already there (saved twice at one step, e.g. a signal right after a scheduled
    save) is replaced.
    """
    fsync_tree(staged)
    publish_directory(staged, final)
    shutil.rmtree(staged.parent, ignore_errors=True)
