"""A test plugin that makes things happen at a chosen optimizer step: a signal, a NaN, an OOM, a kill mid-save.

Config section ``events:``; every event is off unless its step is set.  The kill mid-save needs
``lr_scheduler: kill_while_saving`` too (a constant schedule whose state kills the process).
"""

from __future__ import annotations

import os
import signal

import torch
from pydantic import Field
from transformers import TrainerCallback

from ftk.core.config.schema import StrictModel
from ftk.core.hookspecs import hookimpl
from ftk.core.lm import LossOutput


class EventsSection(StrictModel):
    """Config section ``events:``."""

    signal_at_step: int | None = None
    signal_name: str = "SIGTERM"
    nan_at_step: int | None = None
    oom_at_step: int | None = None
    kill_while_saving_step: int | None = Field(
        None, description="SIGKILL the process while it saves this step"
    )


_current = {"step": 0}


class StepWatcher(TrainerCallback):
    """Remembers the step being computed; sends the configured signal at the end of a step."""

    def __init__(self, section: EventsSection) -> None:
        self.section = section

    def on_step_begin(self, args, state, control, **kwargs):
        _current["step"] = state.global_step + 1

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.section.signal_at_step:
            os.kill(os.getpid(), getattr(signal, self.section.signal_name))


class KillWhileSaving(torch.optim.lr_scheduler.LambdaLR):
    """A constant schedule whose ``state_dict`` (called mid-checkpoint) kills the process at one step."""

    def __init__(self, optimizer: torch.optim.Optimizer, kill_step: int) -> None:
        self.kill_step = kill_step
        super().__init__(optimizer, lambda step: 1.0)

    def state_dict(self):
        if self.last_epoch >= self.kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return {key: value for key, value in super().state_dict().items() if key != "kill_step"}


@hookimpl
def register_config_sections(register):
    register("events", EventsSection)


@hookimpl
def trainer_callbacks(cfg):
    section = cfg.section("events")
    return [StepWatcher(section)] if section is not None else []


@hookimpl
def compute_loss(cfg, model, inputs):
    section = cfg.section("events")
    if section is None or not model.training:
        return None
    if _current["step"] == section.oom_at_step:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if _current["step"] == section.nan_at_step:
        summed = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.float().sum()
        return LossOutput(summed * float("nan"), 1)
    return None


@hookimpl
def register_schedulers(register):
    register(
        "kill_while_saving",
        lambda cfg, optimizer, steps, warmup: KillWhileSaving(
            optimizer, cfg.section("events").kill_while_saving_step
        ),
    )
