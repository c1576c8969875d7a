"""A test plugin that records, per optimizer step, the learning rate the step ran at and the LoRA B norm after it.

Written to ``<output_dir>/step_probe.jsonl`` on the main process: ``{"step", "lr_used", "lora_b_norm"}``.
The learning rate is read from the optimizer right before ``optimizer.step()``, so it is the rate
the update actually used, independent of what Trainer logs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

from ftk.core.hookspecs import hookimpl


class StepProbe(TrainerCallback):
    """Reads the optimizer's rate before each update and the LoRA B matrices after it."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / "step_probe.jsonl"
        self.lr_used: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lr_used = float(optimizer.param_groups[0]["lr"])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        with torch.no_grad():
            norms = [p.float().norm() for name, p in model.named_parameters() if "lora_B" in name]
            lora_b = float(torch.stack(norms).norm()) if norms else None
        entry = {"step": state.global_step, "lr_used": self.lr_used, "lora_b_norm": lora_b}
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")


@hookimpl
def trainer_callbacks(cfg):
    return [StepProbe(cfg.output_dir)]
