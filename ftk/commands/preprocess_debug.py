"""``ftk preprocess --debug``: tokenized rows for a person, showing which tokens are trained.

On a colour terminal trained tokens are green and the rest grey.  Without colour (output piped
or written to a log, ``NO_COLOR``, a dumb terminal) every run of trained tokens is put between
``TRAINED_OPEN`` and ``TRAINED_CLOSE`` in the text itself, so the mask survives ``| less`` and CI
logs.  Tables are printed at their full width when the output is not a terminal (rich would cut
them to 80 columns).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import groupby
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ftk.core.lm import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TRAINED_STYLE = "bold green"
MASKED_STYLE = "dim"
#: Around each run of trained tokens when the output has no colour.
TRAINED_OPEN, TRAINED_CLOSE = "«", "»"


def without_colour(console: Console) -> bool:
    """Whether ``console`` shows no colour (not a terminal, ``NO_COLOR``, a dumb terminal)."""
    return console.color_system is None or console.no_color


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` whole: at its natural width when not on a terminal, cells folded (never cut) on one."""
    for column in table.columns:
        column.overflow = "fold"
    if console.is_terminal:
        console.print(table)
        return
    width = Measurement.get(console, console.options.update(max_width=10_000), table).maximum
    saved = console.width
    console.width = max(width, saved)  # print() alone never goes wider than the console
    try:
        console.print(table)
    finally:
        console.width = saved


def row_warnings(example: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Signs of a broken mask: nothing trained, an untrained end-of-turn token, a doubled BOS."""
    ids, labels = example["input_ids"], example["labels"]
    trained = [label != IGNORE_INDEX for label in labels]
    warnings = []
    if not any(trained):
        warnings.append("no token is trained")
    special = set(tokenizer.all_special_ids)
    for position in range(1, len(ids)):
        # A trained span followed by a special token that is not trained: the model never learns to stop.
        if trained[position - 1] and not trained[position] and ids[position] in special:
            name = tokenizer.convert_ids_to_tokens(ids[position])
            warnings.append(f"end-of-turn token {name} at position {position} is not trained")
            break
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:2] == [bos, bos]:
        warnings.append(
            f"two BOS tokens ({tokenizer.bos_token}) at the start: the template and the tokenizer both add one"
        )
    return warnings


def _runs(
    ids: Sequence[int], labels: Sequence[int], tokenizer: PreTrainedTokenizerBase
) -> Iterator[tuple[bool, list[tuple[int, str]]]]:
    """Consecutive tokens grouped by whether they are trained: (trained, [(id, decoded piece)])."""
    pieces = [(token_id, str(tokenizer.decode([token_id]))) for token_id in ids]
    flags = [label != IGNORE_INDEX for label in labels]
    for trained, group in groupby(zip(flags, pieces, strict=True), key=lambda pair: pair[0]):
        yield trained, [piece for _, piece in group]


def render_row(
    example: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    index: int,
    text_only: bool = False,
    markers: bool = False,
) -> Text:
    """One row as rich Text: trained tokens green, masked ones grey, each followed by ``[id]``.

    With ``text_only`` the decoded text is shown without ids, trained spans highlighted; with
    ``markers`` each run of trained tokens is also put between ``«`` and ``»``.  Newlines inside
    tokens are shown as ``\\n`` (with ids) so that masks at turn boundaries can be read exactly.
    """
    ids, labels = example["input_ids"], example["labels"]
    trained_count = sum(1 for label in labels if label != IGNORE_INDEX)
    text = Text()
    text.append(f"row {index}: {len(ids)} tokens, {trained_count} trained\n", style="bold")
    separator = "" if text_only else " "
    for number, (trained, tokens) in enumerate(_runs(ids, labels, tokenizer)):
        style = TRAINED_STYLE if trained else MASKED_STYLE
        if number:
            text.append(separator)
        if trained and markers:
            text.append(TRAINED_OPEN, style=style)
        for position, (token_id, piece) in enumerate(tokens):
            if text_only:
                text.append(piece, style=style)
                continue
            if position:
                text.append(" ")
            text.append(piece.replace("\n", "\\n"), style=style)
            text.append(f"[{token_id}]", style="green" if trained else "dim")
        if trained and markers:
            text.append(TRAINED_CLOSE, style=style)
    for warning in row_warnings(example, tokenizer):
        text.append(f"\nwarning: {warning}", style="bold yellow")
    return text


def legend(markers: bool = False) -> Text:
    """The key to the colours (and, with ``markers``, the brackets) used by ``render_row``."""
    text = Text("legend: ")
    text.append(f"{TRAINED_OPEN}trained{TRAINED_CLOSE}" if markers else "trained", style=TRAINED_STYLE)
    text.append("  ")
    text.append("not trained", style=MASKED_STYLE)
    text.append("  [token id]")
    return text


def print_rows(
    console: Console, rows: Any, tokenizer: PreTrainedTokenizerBase, count: int, text_only: bool = False
) -> None:
    """The legend and the first ``count`` rows; in a log the rows are not wrapped at 80 columns."""
    markers = without_colour(console)
    console.print(legend(markers))
    for index in range(min(count, len(rows))):
        row = render_row(rows[index], tokenizer, index, text_only=text_only, markers=markers)
        console.print(row, soft_wrap=not console.is_terminal)
