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
