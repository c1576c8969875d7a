"""tqdm bars written to a log become a progress line every few seconds (``ftk.core.progress_lines``).

datasets ("Tokenizing data.jsonl", "Saving the dataset"), transformers ("Loading weights",
"Writing model shards") and huggingface_hub (downloads) draw tqdm bars.  On a terminal they
redraw in place; in a file or a pipe every redraw is appended after a carriage return, and a log
fills with one endless line.  :func:`print_lines_when_not_a_terminal` changes what a bar does
when its stream is not a terminal: nothing while it runs for less than
``progress_lines.interval()`` seconds (most bars: loading a tiny model's weights), then one line
per interval (``Tokenizing data.jsonl: 10,000/50,000 examples (20%)``) and a last line when it
closes; under a distributed launcher only rank 0 prints.  Bars on a terminal are untouched.
This patches ``tqdm.std.tqdm`` (every tqdm bar class derives from it): ``display``, ``clear``
and ``close``.  ``ftk --verbose`` leaves tqdm alone.
"""

from __future__ import annotations

import time
from typing import Any

from ftk.core.launch import rank
from ftk.core.progress_lines import count_line, interval, is_terminal

_STATE = "_ftk_lines"  # per bar: {"last": time of the last line or None}
_installed: dict[str, Any] = {}


def _line(bar: Any) -> str:
    label = (bar.desc or "progress").rstrip(": ")
    elapsed = time.monotonic() - bar.__dict__[_STATE]["started"]
    return count_line(label, int(bar.n), int(bar.total) if bar.total else None, str(bar.unit or "")) + (
        f" [{elapsed:.0f}s]"
    )


def _write(bar: Any, text: str) -> None:
    bar.fp.write(text + "\n")
    getattr(bar.fp, "flush", lambda: None)()


def _display(bar: Any, msg: str | None = None, pos: int | None = None) -> bool:
    if is_terminal(bar.fp):
        return bool(_installed["display"](bar, msg, pos))
    state = bar.__dict__.setdefault(_STATE, {"started": time.monotonic(), "last": None})
    if msg == "" or rank() != 0:  # a clear (``close``); not the main process
        return False
    now = time.monotonic()
    since = now - (state["last"] if state["last"] is not None else state["started"])
    if since >= interval() and not bar.disable:
        state["last"] = now
        _write(bar, _line(bar))
    return True


def _clear(bar: Any, nolock: bool = False) -> None:
    if is_terminal(bar.fp):
        _installed["clear"](bar, nolock)


def _close(bar: Any) -> None:
    if getattr(bar, "disable", True) or is_terminal(getattr(bar, "fp", None)):
        _installed["close"](bar)
        return
    state = bar.__dict__.get(_STATE)
    bar.leave = False  # the last line is ours (below), not a redraw followed by a newline
    _installed["close"](bar)
    if state is not None and state["last"] is not None:
        _write(bar, _line(bar))


def print_lines_when_not_a_terminal() -> None:
    """Make every tqdm bar whose stream is not a terminal print occasional lines instead (idempotent)."""
    from tqdm import std

    if _installed:
        return
    _installed.update(display=std.tqdm.display, clear=std.tqdm.clear, close=std.tqdm.close)
    std.tqdm.display = _display  # type: ignore[method-assign]
    std.tqdm.clear = _clear  # type: ignore[method-assign]
    std.tqdm.close = _close  # type: ignore[method-assign]


def restore() -> None:
    """Undo :func:`print_lines_when_not_a_terminal` (tests)."""
    from tqdm import std

    for name, function in _installed.items():
        setattr(std.tqdm, name, function)
    _installed.clear()
