"""A rich progress bar for training: step, loss, learning rate, grad norm, tokens/s and ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from ftk.core.callbacks import TrainerCallback
from ftk.core.hookspecs import hookimpl


def format_stats(logs: dict[str, Any]) -> str:
    """The progress line's metrics from one Trainer log entry."""
    parts = []
    if "loss" in logs:
        parts.append(f"loss {logs['loss']:.4f}")
    if "learning_rate" in logs:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    if "grad_norm" in logs:
        parts.append(f"grad {logs['grad_norm']:.3f}")
    if "tokens_per_second" in logs:
        parts.append(f"{logs['tokens_per_second']:,.0f} tok/s")
    return "  ".join(parts)


class RichProgressCallback(TrainerCallback):
    """Draws one progress bar per run on stderr; prints eval results above it."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self.stats = ""
        self.last_eval = ""

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]step[/]"),
            MofNCompleteColumn(),
            BarColumn(bar_width=12),
            TextColumn("{task.fields[stats]}"),
            TextColumn("eta"),
            TimeRemainingColumn(compact=True),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, stats=""
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "eval_loss" in logs:
            self.progress.console.print(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
            return
        stats = format_stats(logs)
        if stats:
            self.progress.update(self.task, stats=stats)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


@hookimpl
def trainer_callbacks() -> list[TrainerCallback]:
    """Contribute the progress bar."""
    return [RichProgressCallback()]
