"""Progress of long steps as plain lines, for logs: a line every few seconds instead of a redrawn bar.

A terminal gets live progress bars (rich, tqdm).  Written to a file or a pipe, a bar is either
nothing until it ends (rich) or one endless line of carriage returns (tqdm).  There, a step
that takes longer than ``interval()`` seconds prints a line such as ``warm-up: 120/300 steps
(40%), loss 6.512`` every ``interval()`` seconds, and a last line when it ends; a quicker step
prints nothing.  ``FTK_PROGRESS_INTERVAL`` sets the seconds (default 10).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from ftk.core.launch import rank

DEFAULT_INTERVAL = 10.0


def interval() -> float:
    """Seconds between two progress lines (``FTK_PROGRESS_INTERVAL``, default 10)."""
    try:
        return max(float(os.environ.get("FTK_PROGRESS_INTERVAL", DEFAULT_INTERVAL)), 0.0)
    except ValueError:
        return DEFAULT_INTERVAL


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (where live bars redraw in place)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        return False


def count_line(label: str, done: int, total: int | None, unit: str = "", detail: str = "") -> str:
    """``label: done/total unit (pct%), detail`` (the parts that are known)."""
    unit = f" {unit.strip()}" if unit.strip() else ""
    if total:
        text = f"{label}: {done:,}/{total:,}{unit} ({100 * done // total}%)"
    else:
        text = f"{label}: {done:,}{unit}"
    return f"{text}, {detail}" if detail else text


class ProgressLines:
    """Lines for one long step when ``stream`` is not a terminal (on a terminal it prints nothing).

    ``update(done, detail)`` prints at most one line per ``interval()`` seconds, the first one
    ``interval()`` seconds after the start, and none for the last unit of work; ``finish()``
    prints the last line, with the time taken, if the step printed any (a quick step stays
    silent).  Only the main process (rank 0) prints.
    """

    def __init__(self, label: str, total: int | None, unit: str = "", stream: IO[str] | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every = interval()
        self.started = self.last = time.monotonic()
        self.done = 0
        self.detail = ""
        self.printed = False
        self.active = not is_terminal(self.stream) and rank() == 0

    def _print(self, elapsed: bool = False) -> None:
        line = count_line(self.label, self.done, self.total, self.unit, self.detail)
        if elapsed:
            line += f" in {time.monotonic() - self.started:.1f}s"
        print(line, file=self.stream, flush=True)
        self.printed = True

    def update(self, done: int, detail: str = "") -> None:
        """Record progress; print a line when ``interval()`` seconds passed since the last one."""
        self.done, self.detail = done, detail
        now = time.monotonic()
        last_unit = self.total is not None and done >= self.total
        if self.active and not last_unit and now - self.last >= self.every:
            self.last = now
            self._print()

    def finish(self) -> None:
        """The last line (with the time taken), printed only if the step printed lines before."""
        if self.active and self.printed:
            self._print(elapsed=True)
            self.printed = False
