"""``loss.png``: training loss per logged step, eval loss on the same axis.

The data come from ``trainer.state.log_history``; ``loss_series`` extracts them (a pure function)
and ``write_loss_plot`` draws them with matplotlib's Agg canvas, which needs no display and sets
no global backend.  A run that logged no finite loss gets no plot.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftk.core.config.schema import FtkConfig
from ftk.core.files import atomic_write

LOSS_PLOT_NAME = "loss.png"
#: From this many training points on, a moving average is drawn over the raw line.
SMOOTH_FROM_POINTS = 25
#: Figure size in inches and resolution: the PNG is 800 x 450 pixels.
FIGURE_SIZE = (8.0, 4.5)
FIGURE_DPI = 100


@dataclass
class LossSeries:
    """The finite losses of a run by optimizer step, and the steps whose loss was NaN or infinite."""

    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    nonfinite_steps: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when there is nothing to draw."""
        return not self.train_steps and not self.eval_steps


def loss_series(log_history: Sequence[dict[str, Any]]) -> LossSeries:
    """Split Trainer's ``log_history`` into train (``loss``) and eval (``eval_loss``) points by step.

    The final summary entry (``train_loss``, ``train_runtime``) is not a point.  Non-finite values
    are left out of the points and their steps listed in ``nonfinite_steps``, in log order.
    """
    series = LossSeries()
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for key, steps, values in (
            ("loss", series.train_steps, series.train_loss),
            ("eval_loss", series.eval_steps, series.eval_loss),
        ):
            if key not in entry:
                continue
            value = float(entry[key])
            if math.isfinite(value):
                steps.append(int(step))
                values.append(value)
            else:
                series.nonfinite_steps.append(int(step))
    return series


def moving_average(values: Sequence[float], half_window: int) -> list[float]:
    """Centred moving average: each output is the mean of the value and up to ``half_window`` on each side.

    Near the ends the window shrinks symmetrically (the first and last outputs are the values
    themselves), so the line neither lags behind a trend nor bends towards one side at the edges.
    """
    if half_window < 0:
        raise ValueError(f"half_window must not be negative, got {half_window}")
    last = len(values) - 1
    out: list[float] = []
    for index in range(len(values)):
        reach = min(half_window, index, last - index)
        window = values[index - reach : index + reach + 1]
        out.append(sum(window) / len(window))
    return out


def plot_title(cfg: FtkConfig) -> str:
    """``loss: <base model>``, the model named by its folder name when it is a local directory."""
    model = cfg.base_model.rstrip("/\\")
    name = Path(model).name if Path(model).is_dir() else model
    return f"loss: {name}"


def write_loss_plot(
    log_history: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str
) -> Path | None:
    """Draw the run's train and eval loss to the PNG ``path``; None (no file) when nothing was logged.

    The file is written under a temporary name and renamed, so a reader never sees half a PNG.
    """
    series = loss_series(log_history)
    if series.empty:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    count = len(series.train_steps)
    if count >= SMOOTH_FROM_POINTS:
        axes.plot(
            series.train_steps,
            series.train_loss,
            color="tab:blue",
            alpha=0.3,
            linewidth=1,
            label="train loss",
        )
        half = max(2, count // 40)
        axes.plot(
            series.train_steps,
            moving_average(series.train_loss, half),
            color="tab:blue",
            linewidth=2,
            label=f"train loss, mean of {2 * half + 1} logged values",
        )
    elif count:
        axes.plot(series.train_steps, series.train_loss, color="tab:blue", marker=".", label="train loss")
    if series.eval_steps:
        axes.plot(series.eval_steps, series.eval_loss, color="tab:orange", marker="o", label="eval loss")
    for index, step in enumerate(series.nonfinite_steps):
        label = f"NaN or infinite loss ({len(series.nonfinite_steps)} logged)" if index == 0 else None
        axes.axvline(step, color="tab:red", linestyle="--", linewidth=1, label=label)
    axes.set_title(title)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, alpha=0.3)
    axes.legend()

    return atomic_write(path, lambda out: figure.savefig(out, format="png", dpi=FIGURE_DPI))


def write_run_plot(cfg: FtkConfig, trainer: Any) -> Path | None:
    """Write ``<output_dir>/loss.png`` for ``trainer``'s run (main process only)."""
    if not trainer.state.is_world_process_zero:
        return None
    return write_loss_plot(trainer.state.log_history, Path(cfg.output_dir) / LOSS_PLOT_NAME, plot_title(cfg))
