"""The loss watchdog (``loss_watchdog_threshold``) and early stopping (``early_stopping_patience``).

Imported when a run starts (it imports torch and transformers through the run guard).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import EarlyStoppingCallback

from ftk.core.callbacks import TrainerCallback
from ftk.core.errors import say
from ftk.core.run_guard import Divergence


@dataclass
class LossWatchdogStop(Divergence):
    """A stop by the loss watchdog, reported through the run guard like a divergence."""

    threshold: float = 0.0
    patience: int = 3

    def describe(self) -> str:
        """What the watchdog saw, with both keys' values."""
        return (
            f"the training loss stayed above loss_watchdog_threshold {self.threshold:g} for "
            f"{self.patience} logged steps in a row (loss_watchdog_patience), the last at step "
            f"{self.step}: loss {self.loss:.4g}"
        )


class LossWatchdog(TrainerCallback):
    """Stops the run when ``patience`` logged training losses in a row are above ``threshold``.

    The stop goes through ``guard`` (the trainer's run guard) as a divergence: nothing is saved at
    that step, the final model is not saved, and ``ftk train`` exits with code 1 naming the last
    good checkpoint.  Without a guard the run only stops.
    """

    def __init__(self, threshold: float, patience: int, guard: Any = None) -> None:
        self.threshold = threshold
        self.patience = patience
        self.guard = guard
        self.above = 0

    def on_train_begin(self, args, state, control, **kwargs):
        """Count afresh (a resumed run counts from its first logged step)."""
        self.above = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Count a logged training loss above the threshold; stop after ``patience`` in a row."""
        loss = (logs or {}).get("loss")
        if loss is None:  # an eval or end-of-run entry
            return control
        self.above = self.above + 1 if loss > self.threshold else 0
        if self.above < self.patience:
            return control
        if self.guard is not None and self.guard.divergence is None:
            self.guard.divergence = LossWatchdogStop(
                state.global_step, float(loss), None, threshold=self.threshold, patience=self.patience
            )
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False
        return control


class EarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping on ``eval_loss``, saying in one line when it stops the run.

    ftk's config checks already guarantee what transformers asserts at the start (an eval metric and
    evaluations during training); its warning about ``load_best_model_at_end`` is left out: without
    it the final model is the last one, as the docs say.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        """Nothing to check (see the class docstring)."""

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        """Count an evaluation without improvement; stop, with a note, after ``patience`` of them."""
        already = control.should_training_stop
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if control.should_training_stop and not already:
            say(
                f"early_stopping_patience: eval_loss has not improved for {self.early_stopping_patience} "
                f"evaluations in a row (best {state.best_metric:.4g}); training stops at step {state.global_step}"
            )
