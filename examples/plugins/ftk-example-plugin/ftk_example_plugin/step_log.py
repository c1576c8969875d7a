"""The ``example:`` config section and the callback it turns on: ``example_plugin.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# transformers' TrainerCallback interface, without importing transformers (and torch) with the
# plugin: every ftk command imports its plugins, `ftk --help` included.
from ftk.core.callbacks import TrainerCallback

SECTION = "example"
LOG_FILE = "example_plugin.jsonl"


class ExampleSection(BaseModel):
    """``example:`` in a config; unknown keys are errors, like everywhere in ftk configs."""

    model_config = ConfigDict(extra="forbid")

    log_every: int = Field(1, gt=0, description="Write every N-th logged training step.")


class StepLogCallback(TrainerCallback):
    """Writes one JSON line (step, loss, learning rate) per logged training step to ``LOG_FILE``."""

    def __init__(self, output_dir: str, log_every: int) -> None:
        self.path = Path(output_dir) / LOG_FILE
        self.log_every = log_every

    def on_train_begin(self, args, state, control, **kwargs):
        # Only the main process writes (one per run, also under torchrun); a fresh run starts an
        # empty file, a resumed one (global_step > 0) appends to what is there.
        if state.is_world_process_zero and state.global_step == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        # on_log also fires for eval results and the end-of-run summary: keep training steps only.
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        if state.global_step % self.log_every:
            return
        entry = {"step": state.global_step, "loss": logs["loss"], "learning_rate": logs.get("learning_rate")}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
