"""Schedule-free optimizers keep two sets of weights: the ones they train, and an average to evaluate and keep.

transformers' training step switches the optimizer to ``train()`` before each micro-batch; this
callback switches it to ``eval()`` (the averaged weights) before an evaluation, a checkpoint or
the end of the run, so that ftk's evaluation and the saved model use the average.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


def to_eval_mode(optimizer: Any) -> None:
    """``optimizer.eval()`` where the optimizer has one (schedule-free: load the averaged weights)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
    switch = getattr(inner, "eval", None)
    if callable(switch):
        switch()


class ScheduleFreeModes(TrainerCallback):
    """Puts a schedule-free optimizer in eval mode when the step will evaluate or save, and at the end."""

    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        """Before the evaluation or checkpoint that Trainer runs after this step."""
        if control.should_evaluate or control.should_save:
            to_eval_mode(optimizer)

    def on_train_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        """Before ftk saves the trained model."""
        to_eval_mode(optimizer)
