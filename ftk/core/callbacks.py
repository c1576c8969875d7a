"""A base class for training callbacks that does not import transformers.

Plugins are imported by every command, ``ftk --help`` and ``ftk validate`` included, and
importing ``transformers.TrainerCallback`` costs seconds (it imports torch).  A plugin's callback
subclasses this ``TrainerCallback`` instead: it has every event method of transformers' class,
each doing nothing, so ``Trainer`` (which calls ``getattr(callback, event)(args, state, control,
**kwargs)``, never checking the class) drives it exactly like one of its own.  An event that a
newer transformers adds is answered by a no-op too.  Type checkers see transformers' class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["TrainerCallback"]


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


if TYPE_CHECKING:
    from transformers import TrainerCallback
else:

    class TrainerCallback:
        """transformers' callback interface without importing transformers; each event does nothing."""

        def on_init_end(self, args, state, control, **kwargs):
            """At the end of Trainer's initialisation."""

        def on_train_begin(self, args, state, control, **kwargs):
            """At the beginning of training."""

        def on_train_end(self, args, state, control, **kwargs):
            """At the end of training."""

        def on_epoch_begin(self, args, state, control, **kwargs):
            """At the beginning of an epoch."""

        def on_epoch_end(self, args, state, control, **kwargs):
            """At the end of an epoch."""

        def on_step_begin(self, args, state, control, **kwargs):
            """At the beginning of an optimizer step (before its first micro-batch)."""

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            """After gradient clipping, before ``optimizer.step()``."""

        def on_optimizer_step(self, args, state, control, **kwargs):
            """After ``optimizer.step()``, before the gradients are zeroed."""

        def on_substep_end(self, args, state, control, **kwargs):
            """At the end of a micro-batch that is not the last of its step."""

        def on_step_end(self, args, state, control, **kwargs):
            """At the end of an optimizer step."""

        def on_evaluate(self, args, state, control, **kwargs):
            """After an evaluation."""

        def on_predict(self, args, state, control, metrics, **kwargs):
            """After a prediction."""

        def on_save(self, args, state, control, **kwargs):
            """After a checkpoint is saved."""

        def on_log(self, args, state, control, **kwargs):
            """After Trainer logs metrics."""

        def on_prediction_step(self, args, state, control, **kwargs):
            """After a prediction step."""

        def on_push_begin(self, args, state, control, **kwargs):
            """Before a push to the Hub."""

        def __getattr__(self, name: str) -> Any:
            # An event a newer transformers calls: nothing to do, like its own base class.
            if name.startswith("on_"):
                return _ignore
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
