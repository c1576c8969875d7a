"""What the user is told about dropped rows: an error when a dataset keeps none, a note otherwise.

A dataset entry none of whose rows is kept is a mistake in the data or its settings (no
assistant turn in any conversation, every row over ``sequence_len``, every row invalid and
skipped), so it stops the run with the dataset named; training on the other datasets alone
would hide it.  Rows dropped from a dataset that keeps others are counted (``ftk preprocess``
shows the table) and summed up in one line (``ftk train``'s data line).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ftk.core.errors import FtkError

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig
    from ftk.core.data.tokenize import SourceStats

#: Where a few dropped rows are listed, at most this many per reason and source.
SHOWN_ROWS = 3


NOTHING_TRAINED_HINT = (
    "no token of them is trained: a conversation without an assistant turn, "
    "or roles_to_train or message_field_training leaving every message out"
)


def check_rows_left(where: str, stats: SourceStats, cfg: FtkConfig) -> None:
    """An FtkError naming the dataset ``where`` (``datasets[1]``) when it has rows but keeps none."""
    if not stats.rows or stats.kept:
        return
    reasons = []
    if stats.nothing_trained:
        rows = stats.nothing_trained_examples[:SHOWN_ROWS]
        more = ", ..." if stats.nothing_trained > len(rows) else ""
        shown = f"; {', '.join(rows)}{more}" if rows else ""
        reasons.append(f"{stats.nothing_trained} with nothing to train ({NOTHING_TRAINED_HINT}{shown})")
    if stats.too_long:
        rows = stats.too_long_examples[:SHOWN_ROWS]
        more = ", ..." if stats.too_long > len(rows) else ""
        shown = f"; {', '.join(rows)}{more}" if rows else ""
        reasons.append(
            f"{stats.too_long} longer than sequence_len {cfg.sequence_len} (raise sequence_len, or set "
            f"excess_length_strategy: truncate{shown})"
        )
    if stats.invalid:
        first = f" (first: {stats.invalid_examples[0]})" if stats.invalid_examples else ""
        reasons.append(f"{stats.invalid} invalid and skipped{first}")
    raise FtkError(f"{where} ({stats.path}): no rows left to train on, of {stats.rows}: {'; '.join(reasons)}")


def _shown(rows: list[str], count: int) -> str:
    """`` (data.jsonl:4, data.jsonl:9, ...)`` for the first few of ``count`` rows, or "" when none is known."""
    rows = rows[:SHOWN_ROWS]
    return f" ({', '.join(rows)}{', ...' if count > len(rows) else ''})" if rows else ""


def dropped_note(sources: Sequence[SourceStats]) -> str:
    """``; dropped 3 rows: 2 with nothing to train (data.jsonl:4, data.jsonl:9), 1 too long (data.jsonl:7)``,
    or ""."""
    nothing = sum(s.nothing_trained for s in sources)
    too_long = sum(s.too_long for s in sources)
    invalid = sum(s.invalid for s in sources)
    if not nothing + too_long + invalid:
        return ""
    parts = []
    if nothing:
        rows = [row for s in sources for row in s.nothing_trained_examples]
        parts.append(f"{nothing:,} with nothing to train{_shown(rows, nothing)}")
    if too_long:
        rows = [row for s in sources for row in s.too_long_examples]
        parts.append(f"{too_long:,} too long{_shown(rows, too_long)}")
    if invalid:
        parts.append(f"{invalid:,} invalid")
    total = nothing + too_long + invalid
    return f"; dropped {total:,} row{'s' if total != 1 else ''}: {', '.join(parts)}"
