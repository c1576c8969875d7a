"""Show tokenized rows to a person: each token, coloured by whether it is trained."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
TRAINED_STYLE = "bold green"
MASKED_STYLE = "grey50"


def render_row(example: dict[str, Any], tokenizer: PreTrainedTokenizerBase, index: int) -> Text:
    """One row as rich Text: trained tokens in green, masked ones grey; ids in ``[...]`` after each.

    Whitespace inside tokens is made visible (``\\n`` for newlines) so that masks at turn
    boundaries can be read exactly.
    """
    ids, labels = example["input_ids"], example["labels"]
    trained = sum(1 for label in labels if label != IGNORE_INDEX)
    text = Text(f"row {index}: {len(ids)} tokens, {trained} trained\n", style="bold")
    for token_id, label in zip(ids, labels, strict=True):
        piece = tokenizer.decode([token_id]).replace("\n", "\\n")
        style = TRAINED_STYLE if label != IGNORE_INDEX else MASKED_STYLE
        text.append(piece, style=style)
        text.append(f"[{token_id}]", style=f"dim {'green' if label != IGNORE_INDEX else ''}".strip())
        text.append(" ")
    return text


def legend() -> Text:
    """The key to the colours used by ``render_row``."""
    text = Text("legend: ")
    text.append("trained", style=TRAINED_STYLE)
    text.append("  ")
    text.append("not trained", style=MASKED_STYLE)
    text.append("  [token id]")
    return text
