"""``type: completion``: raw text, every token trained (continued pre-training, plain corpora).

The text is tokenized as plain text: a ``<|endoftext|>`` written inside a document stays
characters and does not become a document boundary.  With ``add_eos`` the tokenizer's eos
token closes each document.  A document longer than ``sequence_len`` is either cut into
consecutive chunks (``long_documents: split``; every token lands in exactly one chunk, the eos
in the last one) or cut short (``truncate``; the eos is then dropped with the rest of the
tail, since the document does not end there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ftk.core.config.schema import DatasetConfig, FtkConfig, StrictModel
from ftk.core.errors import FtkError, RowError
from ftk.prompt_strategies.fields import required_text, text_value

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class CompletionOptions(StrictModel):
    """Dataset keys understood by ``type: completion``."""

    field: str = Field("text", description="Column holding the document text.")
    add_eos: bool = Field(True, description="Append the tokenizer's eos token at the end of each document.")
    long_documents: Literal["split", "truncate"] = Field(
        "split",
        description="Documents longer than sequence_len: cut into consecutive chunks, or keep the start.",
    )


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts before any text on its own (a bos token for Llama-style models).

    Found by encoding a probe with and without special tokens, so a tokenizer that adds nothing
    (Qwen, for one) gives an empty list.
    """
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def required_eos_id(tokenizer: PreTrainedTokenizerBase, strategy: str) -> int:
    """The tokenizer's eos id, or a configuration error naming the strategy that needs it."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise FtkError(
            f"{strategy}: the tokenizer has no eos token; set special_tokens.eos_token in the config"
        )
    return int(eos)


def text_field(row: dict[str, Any], field: str) -> str | None:
    """``row[field]`` when it is text, None when absent or null; other values are a RowError."""
    return text_value(row, field)


class CompletionTokenizer:
    """Turns a row's document into one or more fully trained examples."""

    def __init__(self, options: CompletionOptions, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig):
        self.options = options
        self.tokenizer = tokenizer
        self.sequence_len = cfg.sequence_len
        self.prefix = leading_special_ids(tokenizer)
        self.eos = [required_eos_id(tokenizer, "completion")] if options.add_eos else []

    def __call__(self, row: dict[str, Any]) -> list[dict[str, list[int]]]:
        """The examples for one row: one per chunk of at most ``sequence_len`` tokens."""
        field = self.options.field
        text = required_text(row, field, "field")
        if not text:
            raise RowError(f"{field}: empty text")
        body = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        ids = [*self.prefix, *body, *self.eos]
        step = self.sequence_len
        if self.options.long_documents == "truncate":
            chunks = [ids[:step]]
        else:
            chunks = [ids[start : start + step] for start in range(0, len(ids), step)]
        return [
            {"input_ids": chunk, "labels": list(chunk), "attention_mask": [1] * len(chunk)}
            for chunk in chunks
        ]


def build(
    dataset: DatasetConfig, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig
) -> Callable[[dict[str, Any]], list[dict[str, list[int]]]]:
    """The row -> examples function for a ``completion`` dataset."""
    options = dataset.options
    if not isinstance(options, CompletionOptions):
        options = CompletionOptions()
    return CompletionTokenizer(options, tokenizer, cfg)
