"""Batch examples of different lengths: pad ids, mask padding out of attention and loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ftk.core.lm import IGNORE_INDEX


@dataclass
class PaddingCollator:
    """Right-pads ``input_ids`` with ``pad_token_id``, ``labels`` with -100, ``attention_mask`` with 0."""

    pad_token_id: int
    pad_to_multiple_of: int | None = 8
    #: Pad every batch to at least this many tokens (``pad_to_sequence_len``: fixed shapes).
    pad_to_length: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(example["input_ids"]) for example in examples)
        longest = max(longest, self.pad_to_length or 0)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long),
            "labels": torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long),
            "attention_mask": torch.zeros((len(examples), longest), dtype=torch.long),
        }
        for row, example in enumerate(examples):
            length = len(example["input_ids"])
            batch["input_ids"][row, :length] = torch.as_tensor(example["input_ids"])
            batch["labels"][row, :length] = torch.as_tensor(example["labels"])
            batch["attention_mask"][row, :length] = 1
        return batch
