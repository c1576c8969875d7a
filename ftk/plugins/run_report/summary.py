"""The end-of-run summary: one table of what a run did, printed and written to ``summary.md``.

Every value comes from the trainer's state (``log_history``, ``global_step``, ``epoch``, the best
checkpoint) or from the process (peak memory), so the summary of a run stopped early is as
truthful as that of a finished one: rows whose data the run never produced are left out.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ftk.core.config.schema import FtkConfig
from ftk.core.files import atomic_write_text
from ftk.core.lm import perplexity

#: How many logged training losses are averaged at each end of the "train loss" row.  The
#: advisor's verdict ("healthy: loss fell a → b") averages the same values (its HEALTH_WINDOW), so
#: the two agree on whether the loss fell (tests/test_advisor_cases.py).
LOSS_WINDOW = 5

Row = tuple[str, str]


# --- formatting -------------------------------------------------------------------------------


def format_loss(value: float) -> str:
    """A loss with 4 decimals (``nan`` and ``inf`` as Python writes them)."""
    return f"{value:.4f}"


def format_duration(seconds: float) -> str:
    """``4.2s`` under a minute, ``1m 23s`` under an hour, else ``2h 05m 09s``."""
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s"


def format_bytes(count: float) -> str:
    """A memory size in GiB (two decimals) from 1 GiB on, else in MiB (one decimal)."""
    if count >= 2**30:
        return f"{count / 2**30:.2f} GiB"
    return f"{count / 2**20:.1f} MiB"


# --- reading the log history ------------------------------------------------------------------


def train_loss_trend(log_history: Sequence[dict[str, Any]]) -> str | None:
    """``2.3456 → 1.2345 (mean of first/last 5 logged values)``, or None when no loss was logged.

    The window is ``LOSS_WINDOW`` values, fewer for short runs so the two ends never overlap.
    """
    losses = [float(entry["loss"]) for entry in log_history if "loss" in entry]
    if not losses:
        return None
    if len(losses) == 1:
        return f"{format_loss(losses[0])} (one logged value)"
    window = min(LOSS_WINDOW, len(losses) // 2)
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    how = "first and last logged value" if window == 1 else f"mean of first/last {window} logged values"
    return f"{format_loss(first)} → {format_loss(last)} ({how})"


def mean_tokens_per_second(log_history: Sequence[dict[str, Any]]) -> float | None:
    """Tokens per second over the logged intervals, each weighted by its duration.

    Each training entry carries the running ``num_tokens`` and the interval's ``tokens_per_second``,
    so the interval lasted (tokens since the previous entry) / rate seconds.  Unlike tokens divided
    by ``train_runtime``, this holds for a resumed run (whose token count includes the earlier
    session) and for a run stopped before Trainer logged its runtime.
    """
    tokens = seconds = 0.0
    previous = 0
    for entry in log_history:
        if "num_tokens" not in entry:
            continue
        count = int(entry["num_tokens"])
        rate = entry.get("tokens_per_second")
        if rate and count > previous:
            tokens += count - previous
            seconds += (count - previous) / rate
        previous = count
    return tokens / seconds if seconds > 0 else None


def _last(log_history: Sequence[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return next((entry for entry in reversed(log_history) if key in entry), None)


def best_eval_row(log_history: Sequence[dict[str, Any]]) -> Row | None:
    """``best eval loss``: the lowest finite eval loss, with its perplexity and step."""
    finite = [entry for entry in log_history if "eval_loss" in entry and math.isfinite(entry["eval_loss"])]
    if not finite:
        return None
    best = min(finite, key=lambda entry: entry["eval_loss"])
    loss = float(best["eval_loss"])
    return (
        "best eval loss",
        f"{format_loss(loss)} (perplexity {perplexity(loss):,.2f}) at step {best.get('step', '?')}",
    )


def final_eval_row(log_history: Sequence[dict[str, Any]]) -> Row | None:
    """``final eval loss``: the last eval loss logged, finite or not, and its step."""
    final = _last(log_history, "eval_loss")
    if final is None:
        return None
    return ("final eval loss", f"{format_loss(float(final['eval_loss']))} at step {final.get('step', '?')}")


# --- the process ------------------------------------------------------------------------------


def peak_memory_row() -> Row | None:
    """Peak CUDA memory allocated by tensors when CUDA is in use, else the process's peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return ("peak GPU memory", f"{format_bytes(torch.cuda.max_memory_allocated())} (CUDA max allocated)")
    try:
        import resource
    except ImportError:  # Windows has no getrusage
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024
    return ("peak memory", f"{format_bytes(peak_bytes)} (process max RSS)")


# --- the summary ------------------------------------------------------------------------------


def summary_rows(cfg: FtkConfig, trainer: Any, status: str, extra_rows: Iterable[Row] = ()) -> list[Row]:
    """The (label, value) rows summarising a run, in display order.

    ``status`` says how the run ended ("finished", "stopped by SIGTERM at step 12", ...);
    ``extra_rows`` are the plugins' ``summary_rows`` contributions, placed before the output
    directory.  ``trainer`` needs only a ``state`` (a ``transformers.TrainerState``).
    """
    state = trainer.state
    history = state.log_history
    steps = f"{state.global_step:,}"
    if state.max_steps and state.max_steps > 0:
        steps += f" of {state.max_steps:,}"
    rows: list[Row] = [("status", status), ("optimizer steps", steps), ("epochs", f"{state.epoch or 0:.2f}")]
    runtime = _last(history, "train_runtime")
    if runtime is not None:
        rows.append(("runtime", format_duration(float(runtime["train_runtime"]))))
    trend = train_loss_trend(history)
    if trend is not None:
        rows.append(("train loss", trend))
    best = best_eval_row(history)
    if best is not None:
        rows.append(best)
    if state.best_model_checkpoint:
        rows.append(("best checkpoint", str(state.best_model_checkpoint)))
    final = final_eval_row(history)
    if final is not None:
        rows.append(final)
    tokens = _last(history, "num_tokens")
    if tokens is not None:
        rows.append(("tokens processed", f"{int(tokens['num_tokens']):,}"))
    rate = mean_tokens_per_second(history)
    if rate is not None:
        rows.append(("mean tokens/s", f"{rate:,.0f}"))
    memory = peak_memory_row()
    if memory is not None:
        rows.append(memory)
    rows.extend((str(label), str(value)) for label, value in extra_rows)
    rows.append(("output directory", str(cfg.output_dir)))
    return rows


def _cell(text: str) -> str:
    """Markdown table cell text: pipes escaped, line breaks as ``<br>``."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def summary_markdown(rows: Iterable[Row]) -> str:
    """The summary as a Markdown table followed by a ``generated by ftk <version>`` line."""
    from ftk import __version__

    lines = ["# training summary", "", "| item | value |", "|---|---|"]
    lines += [f"| {_cell(label)} | {_cell(value)} |" for label, value in rows]
    lines += ["", f"generated by ftk {__version__}", ""]
    return "\n".join(lines)


def write_summary(path: str | os.PathLike[str], rows: Iterable[Row]) -> Path:
    """Write ``summary_markdown(rows)`` to ``path`` atomically (temporary file, then rename)."""
    return atomic_write_text(path, summary_markdown(rows))


def print_summary(console: Console, rows: Iterable[Row]) -> None:
    """Print the rows as a two-column rich table titled "training summary" (values never as markup)."""
    table = Table(title="training summary", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    for label, value in rows:
        table.add_row(Text(label), Text(value))
    console.print(table)
