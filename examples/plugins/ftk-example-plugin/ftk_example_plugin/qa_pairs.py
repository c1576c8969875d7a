"""``type: qa_pairs``: rows ``{"question": ..., "answer": ...}``, trained on the answer only.

One example is ``prompt_template`` filled with the question, then the answer, then the
tokenizer's eos token.  The answer and the eos are trained; the prompt is not (labels -100),
unless the config sets ``train_on_inputs: true``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.errors import FtkError, RowError

if TYPE_CHECKING:  # for annotations only: importing transformers takes seconds
    from transformers import PreTrainedTokenizerBase

#: The label of a token the loss ignores (PyTorch's cross-entropy default).
IGNORE_INDEX = -100


class QaPairsOptions(BaseModel):
    """The dataset keys ``type: qa_pairs`` adds next to ``path`` and ``type``.

    ``extra="forbid"`` is what turns a misspelled key (``field_questoin``) into a config error
    that names it; ftk reports it with the file and line like any other config problem.
    """

    model_config = ConfigDict(extra="forbid")

    field_question: str = Field("question", description="Column holding the question.")
    field_answer: str = Field("answer", description="Column holding the answer to train on.")
    prompt_template: str = Field(
        "Q: {question}\nA: ", description="Text before the answer; '{question}' is replaced by the question."
    )

    @field_validator("prompt_template")
    @classmethod
    def _has_question_slot(cls, template: str) -> str:
        if "{question}" not in template:
            raise ValueError("must contain '{question}'")
        return template


def _text(row: dict[str, Any], field: str) -> str:
    """``row[field]`` as text; anything else is a RowError naming the field (ftk adds file and row)."""
    value = row.get(field)
    if value is None:
        raise RowError(f"{field}: missing")
    if not isinstance(value, str):
        raise RowError(f"{field}: must be text, got {type(value).__name__}")
    return value


def build(
    dataset: DatasetConfig, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig
) -> Callable[[dict[str, Any]], dict[str, list[int]]]:
    """Called once per dataset: check what is needed, then return the row -> features function."""
    options = dataset.options  # the dataset's own keys, validated by ftk against QaPairsOptions
    if not isinstance(options, QaPairsOptions):  # a DatasetConfig built in code, not from a file
        options = QaPairsOptions()
    if tokenizer.eos_token_id is None:
        raise FtkError("qa_pairs: the tokenizer has no eos token; set special_tokens.eos_token")
    eos = tokenizer.eos_token_id
    train_prompt = cfg.train_on_inputs

    def to_features(row: dict[str, Any]) -> dict[str, list[int]]:
        prompt = options.prompt_template.replace("{question}", _text(row, options.field_question))
        answer = _text(row, options.field_answer)
        # Prompt and answer are tokenized apart, so the trained span starts exactly at the answer.
        # split_special_tokens: a "<|im_end|>" written in the data stays text, never a control token.
        prompt_ids, answer_ids = tokenizer(
            [prompt, answer], add_special_tokens=False, split_special_tokens=True
        )["input_ids"]
        answer_ids = [*answer_ids, eos]
        prompt_labels = list(prompt_ids) if train_prompt else [IGNORE_INDEX] * len(prompt_ids)
        return {
            "input_ids": prompt_ids + answer_ids,
            "labels": prompt_labels + answer_ids,
            "attention_mask": [1] * (len(prompt_ids) + len(answer_ids)),
        }

    return to_features
