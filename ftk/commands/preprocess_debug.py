"""``ftk preprocess --debug``: tokenized rows for a person, each token coloured by whether it is trained."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from transformers import PreTrainedTokenizerBase

from ftk.core.lm import IGNORE_INDEX

TRAINED_STYLE = "bold green"
MASKED_STYLE = "dim"


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


def render_row(
    example: dict[str, Any], tokenizer: PreTrainedTokenizerBase, index: int, text_only: bool = False
) -> Text:
    """One row as rich Text: trained tokens green, masked ones grey, each followed by ``[id]``.

    With ``text_only`` the decoded text is shown without ids, trained spans highlighted.
    Newlines inside tokens are shown as ``\\n`` so that masks at turn boundaries can be read exactly.
    """
    ids, labels = example["input_ids"], example["labels"]
    trained = sum(1 for label in labels if label != IGNORE_INDEX)
    text = Text()
    text.append(f"row {index}: {len(ids)} tokens, {trained} trained\n", style="bold")
    for token_id, label in zip(ids, labels, strict=True):
        style = TRAINED_STYLE if label != IGNORE_INDEX else MASKED_STYLE
        piece = str(tokenizer.decode([token_id]))
        if text_only:
            text.append(piece, style=style)
            continue
        text.append(piece.replace("\n", "\\n"), style=style)
        text.append(f"[{token_id}]", style="green" if label != IGNORE_INDEX else "dim")
        text.append(" ")
    for warning in row_warnings(example, tokenizer):
        text.append(f"\nwarning: {warning}", style="bold yellow")
    return text


def legend() -> Text:
    """The key to the colours used by ``render_row``."""
    text = Text("legend: ")
    text.append("trained", style=TRAINED_STYLE)
    text.append("  ")
    text.append("not trained", style=MASKED_STYLE)
    text.append("  [token id]")
    return text
