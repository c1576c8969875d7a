"""Clean stops: SIGINT/SIGTERM save a checkpoint and end the run; a NaN or infinite loss ends it unsaved.

Both are checked once per optimizer step, in ``on_step_end``, which runs before Trainer decides
whether to save or evaluate at that step.  A stop signal turns that decision into "save now,
then stop"; a non-finite loss or gradient norm turns it into "stop, save nothing", so the last
checkpoint on disk is the last good one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Divergence:
    """The step at which the loss or the gradient norm stopped being a finite number."""

    step: int
    loss: float | None
    grad_norm: float | None

    def describe(self) -> str:
        """``step 7: loss nan, grad norm inf``: what went non-finite, where."""
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss}")
        if self.grad_norm is not None:
            parts.append(f"grad norm {self.grad_norm}")
        return f"step {self.step}: " + ", ".join(parts)


def _agree(device: torch.device, *flags: bool) -> list[bool]:
    """Each flag OR-ed over all processes (one small all-reduce)."""
    tensor = torch.tensor([float(flag) for flag in flags], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]


class RunGuard(TrainerCallback):
    """Watches each optimizer step for a stop request or a non-finite loss / gradient norm.

    ``step_health`` returns the finished step's loss and its gradient norm (None when Trainer
    computed none); the trainer provides it and resets its counters when asked.
    """

    def __init__(self, step_health: Callable[[], tuple[float, float | None]]) -> None:
        self.step_health = step_health
        self.stop_signal: str | None = None
        self.stopped_at: int | None = None
        self.divergence: Divergence | None = None

    def request_stop(self, name: str) -> None:
        """Ask the run to save and stop at the end of the current optimizer step."""
        self.stop_signal = self.stop_signal or name

    def on_step_end(self, args, state, control, **kwargs):
        loss, grad_norm = self.step_health()
        bad_loss = not math.isfinite(loss)
        bad_norm = grad_norm is not None and not math.isfinite(grad_norm)
        if args.world_size > 1:
            # Every process must take the same decision at the same step, or the others hang.
            bad_loss, bad_norm, stop = _agree(args.device, bad_loss, bad_norm, self.stop_signal is not None)
            if stop and self.stop_signal is None:
                self.stop_signal = "a signal to another process"
        if bad_loss or bad_norm:
            self.divergence = Divergence(
                state.global_step, loss if bad_loss else None, grad_norm if bad_norm else None
            )
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
            control.should_log = True
            return control
        if self.stop_signal is not None:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = False
        return control

    @contextlib.contextmanager
    def signal_handlers(self) -> Iterator[None]:
        """While training: the first SIGINT/SIGTERM requests a clean stop; a second SIGINT aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

        def handle(signum: int, frame: object) -> None:
            self.request_stop(signal.Signals(signum).name)
            # A second Ctrl-C means "now": fall back to Python's KeyboardInterrupt.
            signal.signal(signal.SIGINT, signal.default_int_handler)

        for sig in STOP_SIGNALS:
            signal.signal(sig, handle)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
