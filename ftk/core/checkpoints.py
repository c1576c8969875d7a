"""Checkpoint directories: written under a temporary name, renamed when complete, found again on resume.

A checkpoint is ``<output_dir>/checkpoint-<step>``.  It is first written as
``<output_dir>/.incomplete-checkpoint-<step>/checkpoint-<step>`` and moved into place by one
``os.replace`` when every file is on disk, so a process killed while saving leaves at most an
``.incomplete-checkpoint-<step>`` directory, which nothing mistakes for a checkpoint and the next
run removes (that exact name only: a user's ``.incomplete-drafts/`` is not ftk's).

Each checkpoint carries a marker, ``ftk_checkpoint.json``, naming the run that saved it and the
runs that run continued (its :class:`Lineage`).  ``save_total_limit`` rotates only the complete
``checkpoint-<step>`` folders whose marker belongs to the saving run's lineage: never an earlier
unrelated run's checkpoints, a folder without a marker, or a ``checkpoint-5_backup/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftk.core.files import atomic_write_text, format_size, fsync_tree, publish_directory

CHECKPOINT_PREFIX = "checkpoint"
STAGING_PREFIX = ".incomplete-"
#: The staging folder of the final model, beside the checkpoints (the next run removes a leftover).
FINAL_STAGING_NAME = f"{STAGING_PREFIX}final"
#: The file Trainer writes last into a checkpoint; a directory without it is not a checkpoint.
TRAINER_STATE_FILE = "trainer_state.json"
#: The marker ftk writes into each checkpoint before publishing it: which run saved it.
CHECKPOINT_MARKER = "ftk_checkpoint.json"
#: What Trainer reads with ``torch.load`` on resume, besides the RNG states (``rng_state*.pth``).
TORCH_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")

_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
#: The names of what an interrupted save leaves: a checkpoint's or the final model's staging folder.
_STAGING_NAME = re.compile(rf"^{re.escape(STAGING_PREFIX)}({CHECKPOINT_PREFIX}-\d+|final)$")
_RNG_STATE = re.compile(r"^rng_state(_\d+)?\.pth$")


def new_run_id() -> str:
    """A fresh, random id for a training run (12 hex digits)."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Lineage:
    """The run that saves checkpoints and the runs it continues (resumed from), oldest first."""

    run_id: str
    ancestors: tuple[str, ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        """Every run of the lineage, oldest first, this run last."""
        return (*self.ancestors, self.run_id)

    @classmethod
    def starting(cls, resume_from: Path | None = None, run_id: str | None = None) -> Lineage:
        """A new run's lineage: its own id after those of the checkpoint it resumes (if it has a marker)."""
        inherited = read_marker(resume_from) if resume_from is not None else None
        return cls(run_id or new_run_id(), inherited.ids if inherited is not None else ())

    def owns(self, checkpoint: Path) -> bool:
        """Whether ``checkpoint`` was saved by a run of this lineage (its marker says so)."""
        marker = read_marker(checkpoint)
        return marker is not None and marker.run_id in self.ids

    def as_json(self) -> dict[str, Any]:
        """The marker's fields: ``run_id`` and ``lineage`` (every id, oldest first)."""
        return {"run_id": self.run_id, "lineage": list(self.ids)}


def lineage_from_json(info: Any) -> Lineage | None:
    """The lineage a marker recorded (``run_id`` and ``lineage``), or None when it holds none."""
    if not isinstance(info, dict):
        return None
    run_id, ids = info.get("run_id"), info.get("lineage")
    if not isinstance(run_id, str) or not run_id:
        return None
    if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
        ids = [run_id]
    ancestors = tuple(item for item in ids if item != run_id)
    return Lineage(run_id, ancestors)


def read_marker(checkpoint: Path) -> Lineage | None:
    """The lineage in a checkpoint's ``ftk_checkpoint.json``; None without one (or with garbage)."""
    try:
        return lineage_from_json(json.loads((checkpoint / CHECKPOINT_MARKER).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def write_marker(checkpoint: Path, lineage: Lineage, step: int) -> Path:
    """Write the marker of ``lineage`` into the (staged) checkpoint folder ``checkpoint``."""
    info = {**lineage.as_json(), "step": step}
    return atomic_write_text(checkpoint / CHECKPOINT_MARKER, json.dumps(info, indent=2) + "\n")


def checkpoint_step(path: Path) -> int:
    """The step in a ``checkpoint-<step>`` name."""
    return int(path.name.rpartition("-")[2])


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
    return sorted(found, key=checkpoint_step)


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
    output_dir: str | os.PathLike[str],
    what: str,
    needed: int | None,
    free: int | None,
    cleanup: str,
    lineage: Lineage | None = None,
) -> str:
    """One line for a save that found the disk full: where, what it needs, what is free, what is left.

    ``what`` is the save ("saving checkpoint-4"), ``needed`` its estimated size, ``cleanup`` what
    became of the partial files ("the incomplete checkpoint was removed"); the last good
    checkpoint named is one of ``lineage`` when given.
    """
    sizes = []
    if needed is not None:
        sizes.append(f"it needs about {format_size(needed)}")
    if free is not None:
        sizes.append(f"{format_size(free)} free")
    last = latest_checkpoint(output_dir, lineage)
    where = (
        f"the last good checkpoint is {last} (auto_resume: true continues from it)"
        if last is not None
        else "no checkpoint was saved before it"
    )
    return f"no space left on device while {what} in {output_dir}: {', '.join(sizes)}; {cleanup}; {where}"


def latest_checkpoint(output_dir: str | os.PathLike[str], lineage: Lineage | None = None) -> Path | None:
    """The finished checkpoint with the highest step (of ``lineage``, when given), or None."""
    found = complete_checkpoints(output_dir)
    if lineage is not None:
        found = [path for path in found if lineage.owns(path)]
    return found[-1] if found else None


def is_staging_leftover(path: Path) -> bool:
    """Whether ``path`` is a folder an interrupted ftk save left (``.incomplete-checkpoint-<step>``, ``.incomplete-final``)."""
    return path.is_dir() and not path.is_symlink() and _STAGING_NAME.match(path.name) is not None


def remove_incomplete(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete what an interrupted save left behind (ftk's staging names only); returns the directories removed."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    leftovers = sorted(path for path in root.iterdir() if is_staging_leftover(path))
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def rotate(
    output_dir: str | os.PathLike[str],
    lineage: Lineage,
    limit: int | None,
    saved: Path,
    best: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Keep at most ``limit`` of this lineage's checkpoints after saving ``saved``; returns those deleted.

    Only complete ``checkpoint-<step>`` folders of ``output_dir`` whose marker belongs to
    ``lineage`` and whose step is below ``saved``'s are considered (a later step is another
    branch of an ancestor run).  ``saved`` and ``best`` (``load_best_model_at_end``) are always
    kept; the rest of the ``limit`` goes to the newest steps.  A checkpoint is renamed to its
    staging name before it is deleted, so an interrupted deletion leaves no half checkpoint.
    """
    if not limit:
        return []
    step = checkpoint_step(saved)
    own = [
        path
        for path in complete_checkpoints(output_dir)
        if checkpoint_step(path) < step and lineage.owns(path)
    ]
    best_path = Path(best) if best else None
    protected = [path for path in own if best_path is not None and _same_directory(path, best_path)]
    others = [path for path in own if path not in protected]
    room = max(limit - 1 - len(protected), 0)
    doomed = others[: len(others) - room]
    deleted = []
    for path in doomed:
        aside = staging_root(path.parent, checkpoint_step(path))
        shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(path, aside)
        except OSError:  # cannot be moved: left in place, whole
            continue
        shutil.rmtree(aside, ignore_errors=True)
        deleted.append(path)
    return deleted


def _same_directory(first: Path, second: Path) -> bool:
    try:
        return first.samefile(second)
    except OSError:
        return False


def invalid_file(checkpoint: Path) -> str | None:
    """Why a file that resuming from ``checkpoint`` loads is not a valid checkpoint file, or None.

    The trainer state must be a JSON object with a whole ``global_step``; each ``*.safetensors``
    file must have a readable header; the optimizer, scheduler, scaler and RNG states must load
    with ``torch.load(weights_only=True)`` (memory-mapped: no tensor data is read), which refuses a
    pickle that would run code.  Nothing of the checkpoint is executed or kept.
    """
    state_file = checkpoint / TRAINER_STATE_FILE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return _not_valid(state_file, f"not JSON: {type(exc).__name__}")
    if not isinstance(state, dict) or type(state.get("global_step")) is not int:
        return _not_valid(state_file, "no whole-number global_step in it")
    if not isinstance(state.get("epoch", 0) or 0, (int, float)):
        return _not_valid(state_file, "its epoch is not a number")
    for path in sorted(checkpoint.iterdir()):
        if not path.is_file():
            continue
        if path.name in TORCH_STATE_FILES or _RNG_STATE.match(path.name):
            reason = _torch_load_problem(path)
        elif path.suffix == ".safetensors":
            reason = _safetensors_problem(path)
        else:
            continue
        if reason is not None:
            return _not_valid(path, reason)
    return None


def _not_valid(path: Path, reason: str) -> str:
    return (
        f"{path} is not a valid checkpoint file ({reason}); it was not loaded: resume from another "
        f"checkpoint, or delete {path.parent} if it is damaged"
    )


def _torch_load_problem(path: Path) -> str | None:
    """Why ``torch.load(path, weights_only=True)`` fails (as Trainer would load it), or None."""
    import warnings
    import zipfile

    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with warnings.catch_warnings(), safe_globals():
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        text = str(exc)
        detail = re.search(r"Unsupported (global: GLOBAL [\w.]+|operand \d+)", text)
        what = f": unsupported {detail.group(1)}" if detail else f": {type(exc).__name__}"
        return f"refused by a weights-only load{what}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Why the header of the safetensors file ``path`` cannot be read, or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:
        return f"not a safetensors file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def publish(staged: Path, final: Path) -> None:
    """Move a fully written checkpoint from its staging folder to its final name, atomically.

    A checkpoint already there (saved twice at one step, e.g. a signal right after a scheduled
    save) is replaced.
    """
    fsync_tree(staged)
    publish_directory(staged, final)
    shutil.rmtree(staged.parent, ignore_errors=True)
