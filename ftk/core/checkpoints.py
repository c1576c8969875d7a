"""Checkpoint directories: written under a temporary name, renamed when complete, found again on resume.

A checkpoint is ``<output_dir>/checkpoint-<step>``.  It is first written as
``<output_dir>/.incomplete-checkpoint-<step>/checkpoint-<step>`` and moved into place by one
``os.replace`` when every file is on disk, so a process killed while saving leaves at most an
``.incomplete-*`` directory, which nothing mistakes for a checkpoint and the next run removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ftk.core.files import format_size, fsync_tree, publish_directory

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


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    """What Trainer recorded in a checkpoint's ``trainer_state.json`` (step, epoch, logs)."""
    state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    return state if isinstance(state, dict) else {}


def finished_message(checkpoint: Path, max_steps: int | None, num_epochs: float) -> str | None:
    """The line saying that the run saved in ``checkpoint`` has no step left, or None when it has.

    With ``max_steps`` the run ends at that step; otherwise after ``num_epochs`` passes over the
    data (Trainer's ``epoch`` reaches it exactly on the last step of the last epoch).
    """
    state = trainer_state(checkpoint)
    step = int(state.get("global_step") or 0)
    if max_steps:
        if step < max_steps:
            return None
        where, key = f"is at step {step} of {max_steps} (max_steps)", "max_steps"
    else:
        if float(state.get("epoch") or 0.0) < num_epochs - 1e-9:
            return None
        where, key = f"is at step {step}, the end of epoch {num_epochs:g} (num_epochs)", "num_epochs"
    return f"already finished: {checkpoint} {where}; nothing to train (raise {key} to train further)"


def disk_full_message(
    output_dir: str | os.PathLike[str], what: str, needed: int | None, free: int | None, cleanup: str
) -> str:
    """One line for a save that found the disk full: where, what it needs, what is free, what is left.

    ``what`` is the save ("saving checkpoint-4"), ``needed`` its estimated size, ``cleanup`` what
    became of the partial files ("the incomplete checkpoint was removed").
    """
    sizes = []
    if needed is not None:
        sizes.append(f"it needs about {format_size(needed)}")
    if free is not None:
        sizes.append(f"{format_size(free)} free")
    last = latest_checkpoint(output_dir)
    where = (
        f"the last good checkpoint is {last} (auto_resume: true continues from it)"
        if last is not None
        else "no checkpoint was saved before it"
    )
    return f"no space left on device while {what} in {output_dir}: {', '.join(sizes)}; {cleanup}; {where}"


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
