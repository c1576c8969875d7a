"""Saves and evaluations N times per epoch: the callback and the arithmetic of the epoch's points.

Imported without transformers or torch (``ftk.core.callbacks.TrainerCallback``): plugins load with
every command.
"""

from __future__ import annotations

import math

from ftk.core.callbacks import TrainerCallback

#: The ``save_steps`` / ``eval_steps`` TrainingArguments get when this plugin's callback decides
#: the saves or evaluations: a "steps" strategy (what load_best_model_at_end, the best checkpoint
#: and early stopping need) whose interval never comes.
NEVER = 2**62


def crossings(before: float, after: float, per_epoch: int) -> int:
    """How many of the points ``k / per_epoch`` of an epoch count lie in ``(before, after]``.

    ``before`` and ``after`` are Trainer's epoch counters (fractional) around one optimizer step;
    products are rounded to 9 digits first, so that 0.2 epochs x 5 is one point, not almost one.
    """
    return math.floor(round(after * per_epoch, 9)) - math.floor(round(before * per_epoch, 9))


class PerEpochSchedule(TrainerCallback):
    """Asks Trainer to save and/or evaluate ``saves`` / ``evals`` times per epoch.

    The points are evenly spread over each epoch by its share of micro-batches (Trainer's
    ``state.epoch``), the last at the epoch's end; whatever ``max_steps`` or ``num_epochs`` say,
    each epoch the run reaches gets the same points, and a resumed run (whose state holds the
    epoch counter) keeps them.  The step after which a point is passed is the one saved or evaluated.
    """

    def __init__(self, saves: int = 0, evals: int = 0) -> None:
        self.saves = saves
        self.evals = evals
        self._epoch_before = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        """Note where in the run the step begins."""
        self._epoch_before = float(state.epoch or 0.0)

    def on_step_end(self, args, state, control, **kwargs):
        """Save and/or evaluate when the step passed one of the epoch's points."""
        after = float(state.epoch or 0.0)
        if self.saves and crossings(self._epoch_before, after, self.saves) > 0:
            control.should_save = True
        if self.evals and crossings(self._epoch_before, after, self.evals) > 0:
            control.should_evaluate = True
        return control
