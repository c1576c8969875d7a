"""The one error type that the CLI turns into a clean message and exit code 2."""

from __future__ import annotations


class FtkError(Exception):
    """A problem in the user's input (config, data, environment) that deserves a message, not a traceback.

    ``str(error)`` is shown to the user as it is; it should name the file, the line or row and the
    field where that applies.  Several problems can be reported at once, one per line.
    """

    exit_code = 2


class RowError(FtkError):
    """A dataset row a strategy cannot use; the message names the field (the pipeline adds file and row)."""


def suggest(key: str, candidates: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    import difflib

    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not match:
        # Catch transpositions and abbreviations that difflib scores low on short keys.
        match = [c for c in candidates if c.startswith(key) or key.startswith(c)][:1]
    return f" (did you mean {match[0]!r}?)" if match else ""


def format_loc(loc: tuple[str | int, ...]) -> str:
    """``("datasets", 0, "path")`` -> ``datasets[0].path``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def raise_problems(problems: list[tuple[tuple[str | int, ...], str]]) -> None:
    """Raise (key path, message) problems as one FtkError, a line each naming the key."""
    if problems:
        raise FtkError("\n".join(f"{format_loc(loc)}: {message}" for loc, message in problems))


def say(text: str) -> None:
    """Print a one-line note to stderr as it is (no markup, no wrapping); one process speaks for a run.

    Under a distributed launcher every process runs the same code: only rank 0 prints.
    """
    import sys

    from ftk.core.launch import rank

    if rank() != 0:
        return
    print(text, file=sys.stderr)
