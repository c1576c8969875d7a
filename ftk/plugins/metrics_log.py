"""``metrics.jsonl`` in the output directory: one JSON object per logged training or eval step."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ftk.core.callbacks import TrainerCallback
from ftk.core.config.schema import FtkConfig
from ftk.core.hookspecs import hookimpl

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write those as strings so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _step(line: str) -> float:
    """The step of one metrics.jsonl line (a line that does not parse counts as after every step)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsFileCallback(TrainerCallback):
    """Appends each log entry, with its ``step`` and ``epoch``, to ``<output_dir>/metrics.jsonl``."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / METRICS_FILE

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if state.global_step == 0:  # a fresh run starts a new file
            self.path.write_text("", encoding="utf-8")
        elif self.path.is_file():
            # A resumed run continues the file from its checkpoint: entries the interrupted run
            # logged after that step are dropped, as the resumed run logs those steps again.
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if _step(line) <= state.global_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, "epoch": _clean(state.epoch)}
        entry.update({key: _clean(value) for key, value in logs.items()})
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


@hookimpl
def trainer_callbacks(cfg: FtkConfig) -> list[TrainerCallback]:
    """Contribute the metrics file writer."""
    return [MetricsFileCallback(cfg.output_dir)]
