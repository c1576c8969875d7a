"""Built-in plugin: the end-of-run reports, ``summary.md`` (also printed) and ``loss.png``.

Written when a run ends, finished or stopped early, from the trainer's state and the rows other
plugins contribute through ``summary_rows``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ftk.core.config.schema import FtkConfig
from ftk.core.hookspecs import hookimpl

from .plot import LOSS_PLOT_NAME, loss_series, write_run_plot
from .summary import print_summary, summary_rows, write_summary

SUMMARY_NAME = "summary.md"


@hookimpl
def run_finished(cfg: FtkConfig, trainer: Any, status: str, rows: list[tuple[str, str]]) -> None:
    """Draw ``loss.png``, then write ``summary.md`` and print the same table on stderr (main process only)."""
    if not trainer.state.is_world_process_zero:
        return
    write_run_plot(cfg, trainer)
    plot = Path(cfg.output_dir) / LOSS_PLOT_NAME
    if not loss_series(trainer.state.log_history).empty and plot.is_file():
        rows = [*rows, ("loss plot", str(plot))]
    table = summary_rows(cfg, trainer, status, extra_rows=rows)
    write_summary(Path(cfg.output_dir) / SUMMARY_NAME, table)
    print_summary(Console(stderr=True), table)
