"""``type: input_output``: template-free rows, a list of text segments each marked trained or not.

A row holds ``segments: [{"text": ..., "label": true|false}, ...]``.  The example is the
concatenation of each segment's tokens, every segment tokenized on its own, with no special
tokens added and no template or eos: the text is the whole example.  A control-token string in
the text (``<|im_end|>``) is tokenized as plain text.  Exactly the tokens of segments with
``label: true`` are trained; ``train_on_inputs`` does not apply, since the labels say it all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ftk.core.config.schema import DatasetConfig, FtkConfig, StrictModel
from ftk.core.errors import RowError
from ftk.core.lm import IGNORE_INDEX
from ftk.prompt_strategies.fields import missing_field

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class InputOutputOptions(StrictModel):
    """Dataset keys understood by ``type: input_output``."""

    field_segments: str = Field(
        "segments", description="Column holding the list of {text, label} segments; label true = trained."
    )


def read_segments(row: dict[str, Any], field: str) -> list[tuple[str, bool]]:
    """The row's segments as ``(text, trained)`` pairs, or a RowError naming the bad part."""
    segments = row.get(field)
    if segments is None:
        raise missing_field(row, field, "field_segments")
    if not isinstance(segments, list) or not segments:
        raise RowError(f"{field}: must be a non-empty list of {{text, label}} segments")
    result = []
    for index, segment in enumerate(segments):
        where = f"{field}[{index}]"
        if not isinstance(segment, dict):
            raise RowError(f"{where}: must be a mapping with 'text' and 'label'")
        text = segment.get("text")
        if text is None:
            raise RowError(f"{where}.text: missing")
        if not isinstance(text, str):
            raise RowError(f"{where}.text: must be text, got {type(text).__name__}")
        label = segment.get("label")
        if label is None:
            raise RowError(f"{where}.label: missing (true to train the segment, false not to)")
        if not isinstance(label, bool):
            raise RowError(f"{where}.label: must be true or false, got {label!r}")
        result.append((text, label))
    return result


class InputOutputTokenizer:
    """Turns segment rows into ``input_ids``, ``labels`` and ``attention_mask``."""

    def __init__(self, options: InputOutputOptions, tokenizer: PreTrainedTokenizerBase):
        self.options = options
        self.tokenizer = tokenizer

    def __call__(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """Features for one dataset row."""
        segments = read_segments(row, self.options.field_segments)
        pieces = self.tokenizer(
            [text for text, _ in segments], add_special_tokens=False, split_special_tokens=True
        )["input_ids"]
        input_ids: list[int] = []
        labels: list[int] = []
        for ids, (_, trained) in zip(pieces, segments, strict=True):
            input_ids.extend(ids)
            labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
        return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def build(
    dataset: DatasetConfig, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig
) -> Callable[[dict[str, Any]], dict[str, list[int]]]:
    """The row -> features function for an ``input_output`` dataset."""
    options = dataset.options
    if not isinstance(options, InputOutputOptions):
        options = InputOutputOptions()
    return InputOutputTokenizer(options, tokenizer)
