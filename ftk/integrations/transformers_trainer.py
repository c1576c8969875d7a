"""The private parts of ``transformers.Trainer`` that ftk relies on, in one place.

Trainer offers no public way to read the gradient norm it computes each step, to write a
checkpoint somewhere other than its final folder, or to mark a scheduler as its own (so that a
second ``train()`` builds a new one).  :class:`StagedCheckpointTrainer` does these through
``_get_grad_norm``, ``_get_output_dir``, ``_save_checkpoint`` and ``_created_lr_scheduler``;
``tests/test_transformers_private_api.py`` checks them against the installed transformers, and
``pyproject.toml`` allows only the versions that test was run on.

Checkpoints: Trainer writes ``checkpoint-N`` into ``.incomplete-checkpoint-N/`` (what
``_get_output_dir`` returns while a save runs); once every process has written its part, the
main process writes the trainer state, renames the folder into place and rotates old ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from ftk.core import checkpoints


class StagedCheckpointTrainer(Trainer):
    """A Trainer that keeps each step's gradient norm and publishes checkpoints by one rename."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The gradient norm of the last optimizer step (a tensor, or a float under DeepSpeed).
        self.last_grad_norm: Any = None
        self._checkpoint_staging: str | None = None

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
        self._checkpoint_staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
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
            checkpoints.publish(staging / name, run_dir / name)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        if distributed:
            torch.distributed.barrier()
