"""The private parts of ``transformers.Trainer`` that ftk relies on, in one place.

Trainer offers no public way to read the gradient norm it computes each step, to write a
checkpoint somewhere other than its final folder, or to mark a scheduler as its own (so that a
second ``train()`` builds a new one).  :class:`StagedCheckpointTrainer` does these through
``_get_grad_norm``, ``_get_output_dir``, ``_save_checkpoint`` and ``_created_lr_scheduler``;
``tests/test_transformers_private_api.py`` checks them against the installed transformers, and
``pyproject.toml`` allows only the versions that test was run on.

Checkpoints: Trainer writes ``checkpoint-N`` into ``.incomplete-checkpoint-N/`` (what
``_get_output_dir`` returns while a save runs); once every process has written its part, the
main process writes the trainer state and ftk's marker (the run's lineage), renames the folder
into place and rotates this lineage's old ones (``ftk.core.checkpoints.rotate``; Trainer's own
rotation, which deletes any ``checkpoint-*`` folder, is never given a limit).  A save that fails
removes its staging folder; one that fails for want of disk space becomes a
:class:`~ftk.core.files.DiskFullError` saying how much it needs.  The final model is staged the
same way (:meth:`StagedCheckpointTrainer.save_model_staged`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from ftk.core import checkpoints
from ftk.core.files import DiskFullError, free_space, is_disk_full, publish_files, tree_size

#: The staging folder of the final model, beside the checkpoints (the next run removes a leftover).
FINAL_STAGING_NAME = checkpoints.FINAL_STAGING_NAME
#: Name starts of the files a tokenizer saves (its vocabulary, merges, template, settings).
TOKENIZER_FILES = (
    "tokenizer",
    "vocab",
    "merges",
    "special_tokens_map",
    "added_tokens",
    "chat_template",
    "spiece",
)


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by the distinct tensors in ``tensors`` (nested dicts, lists and tuples)."""
    seen: set[int] = set()
    total = 0
    stack = [tensors]
    while stack:
        item = stack.pop()
        if torch.is_tensor(item):
            if item.device.type != "meta" and id(item) not in seen:
                seen.add(id(item))
                total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


class StagedCheckpointTrainer(Trainer):
    """A Trainer that keeps each step's gradient norm and publishes checkpoints by one rename.

    ``lineage`` names the run in each checkpoint's marker (default: a new run of its own);
    ``checkpoint_limit`` (default: the arguments' ``save_total_limit``, which is then cleared so
    that Trainer never rotates) applies to that lineage's checkpoints only.
    """

    def __init__(
        self,
        *args: Any,
        lineage: checkpoints.Lineage | None = None,
        checkpoint_limit: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        #: The gradient norm of the last optimizer step (a tensor, or a float under DeepSpeed).
        self.last_grad_norm: Any = None
        self._checkpoint_staging: str | None = None
        #: The run whose checkpoints this trainer saves and rotates.
        self.lineage = lineage or checkpoints.Lineage.starting()
        self.checkpoint_limit = checkpoint_limit or self.args.save_total_limit
        # Trainer's own rotation deletes every checkpoint-* folder, this run's or not: take it over.
        self.args.save_total_limit = None
        #: The checkpoint saved last by this trainer (None before the first save).
        self.last_checkpoint: Path | None = None

    def before_checkpoint(self) -> None:
        """Called on every process before a checkpoint is written (to bring the state up to date)."""

    def saved_weight_bytes(self) -> int:
        """About how many bytes the model's saved weights take: the trainable ones of an adapter, else all."""
        if self.model is None:
            return 0
        adapter = getattr(self.model, "peft_config", None) is not None
        params = [param for param in self.model.parameters() if param.requires_grad or not adapter]
        return tensor_bytes(params)

    def tokenizer_bytes(self) -> int:
        """About how many bytes the tokenizer's files take (those it was loaded from, when a local folder)."""
        source = Path(str(getattr(self.processing_class, "name_or_path", "") or ""))
        if not str(source) or not source.is_dir():
            return 0
        return sum(
            tree_size(path)
            for path in source.iterdir()
            if path.is_file() and path.name.startswith(TOKENIZER_FILES)
        )

    def save_bytes(self, checkpoint: bool) -> int:
        """About how many bytes a save writes: weights, tokenizer files and, in a checkpoint, the optimizer state."""
        total = self.saved_weight_bytes() + self.tokenizer_bytes()
        if checkpoint and self.optimizer is not None:
            total += tensor_bytes(self.optimizer.state_dict()["state"])
        return total

    def _checkpoint_bytes(self, run_dir: Path, written: int) -> int:
        """A checkpoint's size: the last one's, else an estimate from the state (at least what was written)."""
        previous = checkpoints.latest_checkpoint(run_dir, self.lineage)
        return max(written, tree_size(previous) if previous is not None else self.save_bytes(checkpoint=True))

    def mark_scheduler_created(self) -> None:
        """Tell Trainer the scheduler is its own, to be rebuilt by a later ``train()`` call."""
        self._created_lr_scheduler = True

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self.last_grad_norm = norm
        return norm

    def _get_output_dir(self, trial: Any) -> str:
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        step = self.state.global_step
        name = checkpoints.checkpoint_name(step)
        staging = checkpoints.staging_root(run_dir, step)
        self.before_checkpoint()
        self._checkpoint_staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        except BaseException as exc:
            full = self._failed_save(
                exc,
                staging,
                run_dir,
                f"saving {name}",
                "the incomplete checkpoint was removed",
                lambda written: self._checkpoint_bytes(run_dir, written),
            )
            if full is not None:
                raise full from exc
            raise
        finally:
            self._checkpoint_staging = None
        if self.state.best_global_step:
            # Trainer looked for the best checkpoint in the staging folder; point at its final place.
            best = run_dir / checkpoints.checkpoint_name(self.state.best_global_step)
            if self.state.best_global_step == step or best.is_dir():
                self.state.best_model_checkpoint = str(best)
        distributed = self.args.world_size > 1 and torch.distributed.is_initialized()
        if distributed:  # every rank has written its part (e.g. its RNG state) before the rename
            torch.distributed.barrier()
        if self.args.should_save:
            self.state.save_to_json(str(staging / name / checkpoints.TRAINER_STATE_FILE))
            checkpoints.write_marker(staging / name, self.lineage, step)
            checkpoints.publish(staging / name, run_dir / name)
            self.last_checkpoint = run_dir / name
            checkpoints.rotate(
                run_dir, self.lineage, self.checkpoint_limit, run_dir / name, self.state.best_model_checkpoint
            )
        if distributed:
            torch.distributed.barrier()

    def save_model_staged(self, output_dir: Path) -> None:
        """``save_model`` into a staging folder, then each file moved into ``output_dir`` by a rename.

        A save that fails leaves ``output_dir`` as it was (the staging folder is removed); for want
        of disk space, a :class:`DiskFullError` with the size needed.
        """
        staging = output_dir / FINAL_STAGING_NAME
        distributed = self.args.world_size > 1 and torch.distributed.is_initialized()
        try:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            self.save_model(str(staging))
            if distributed:  # every process has written its part
                torch.distributed.barrier()
            if self.args.should_save:
                publish_files(staging, output_dir)
        except BaseException as exc:
            full = self._failed_save(
                exc,
                staging,
                output_dir,
                "saving the trained model",
                "nothing of it was left there",
                lambda written: max(written, self.save_bytes(checkpoint=False)),
            )
            if full is not None:
                raise full from exc
            raise

    def _failed_save(
        self,
        exc: BaseException,
        staging: Path,
        directory: Path,
        what: str,
        cleanup: str,
        estimate: Callable[[int], int],
    ) -> DiskFullError | None:
        """Remove the staging folder of a failed save; the error to raise instead of ``exc`` for a full disk.

        ``estimate(bytes written)`` is the size of the whole save.  torch.save reports a full disk
        only as a failed write, so a save that left less free space than it needs counts as one.
        """
        written, free = tree_size(staging), free_space(directory)
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, Exception):  # an interrupt: no message to add
            return None
        needed = estimate(written)
        if not (is_disk_full(exc) or (free is not None and free < needed)):
            return None
        return DiskFullError(
            checkpoints.disk_full_message(
                directory, what, needed, free_space(directory), cleanup, self.lineage
            )
        )
