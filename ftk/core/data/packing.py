"""Sample packing: several examples in one ``sequence_len`` row, with no attention between them.

* ``pack_lengths`` puts examples into bins of at most ``capacity`` tokens. Which lengths share a
  bin (the shapes) comes from the lengths alone: the better of best-fit decreasing (bins kept in
  buckets by remaining room, O(log capacity) a placement) and, for up to 20,000 examples, an
  exact fill that tops up each bin by subset sum. So the number of bins, and therefore of steps,
  is the same on every epoch and every rank; a seeded shuffle decides which example takes each
  slot among those of equal length, and the bins' order is shuffled per epoch.
* ``PackedBatchSampler`` hands each rank its own bins, ``micro_batch_size`` bins per batch, with
  the same number of batches on every rank.
* ``PackingCollator`` concatenates a bin's examples into one row. ``position_ids`` restart at
  every example and there is no ``attention_mask``, which is how transformers recognises packed
  rows: flash-attention runs varlen, and sdpa, eager and flex attention get a block-diagonal
  causal mask. The first label of each example is -100, so no token is predicted from the
  example before it. Padding forms its own example with labels -100, so every query attends to
  at least itself: no fully masked row, no NaN.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ftk.core.data.bins import (
    EXACT_FILL_MAX_ROWS,
    BinShapes,
    assign_examples,
    assign_slots,
    bin_shapes,
    pack_lengths,
    packing_efficiency,
    split_bins,
)
from ftk.core.data.columns import as_array
from ftk.core.lm import IGNORE_INDEX

__all__ = [
    "EXACT_FILL_MAX_ROWS",
    "REAL_TOKENS_KEY",
    "BinShapes",
    "PackedBatchSampler",
    "PackedDataset",
    "PackingCollator",
    "assign_examples",
    "bin_shapes",
    "pack_lengths",
    "packing_efficiency",
]

#: Batch key with the number of real (non-padding) tokens; the trainer removes it before the model.
REAL_TOKENS_KEY = "num_real_tokens"


class PackedBatchSampler:
    """Batches of ``micro_batch_size`` bins for one rank (the last may hold fewer); reshuffled per epoch.

    ``lengths`` may be a list, a numpy array or a ``datasets`` Column (read as one arrow array);
    the bins are kept as arrays, and lists are made only for the batches handed out.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        capacity: int,
        micro_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.lengths = as_array(lengths)
        self.capacity = capacity
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        # The shapes depend on the lengths only: computed once, the same number of bins every epoch.
        self.shapes = bin_shapes(self.lengths, capacity)
        self.num_bins = len(self.shapes)

    def set_epoch(self, epoch: int) -> None:
        """Pack and order the next ``__iter__`` for ``epoch``."""
        self.epoch = epoch

    def _epoch_bins(self) -> tuple[np.ndarray, list[int]]:
        """The examples in slot order, and the order in which bins are dealt out, for this epoch."""
        seed = self.seed + self.epoch if self.shuffle else self.seed
        examples = assign_slots(self.shapes, self.lengths, seed)
        order = list(range(self.num_bins))
        if self.shuffle:
            random.Random(seed).shuffle(order)
        return examples, order

    def bins(self) -> list[list[int]]:
        """All bins of the current epoch, in the order they are dealt out."""
        examples, order = self._epoch_bins()
        bins = split_bins(examples, self.shapes.starts)
        return [bins[b] for b in order]

    @property
    def bins_per_rank(self) -> int:
        """Every rank gets this many bins; at most ``world_size - 1`` bins sit out an epoch."""
        return self.num_bins // self.world_size

    def __len__(self) -> int:
        return -(-self.bins_per_rank // self.micro_batch_size)

    def __iter__(self) -> Iterator[list[list[int]]]:
        examples, order = self._epoch_bins()
        starts = self.shapes.starts
        mine = order[self.rank :: self.world_size][: self.bins_per_rank]
        for first in range(0, len(mine), self.micro_batch_size):
            yield [
                examples[starts[b] : starts[b + 1]].tolist()
                for b in mine[first : first + self.micro_batch_size]
            ]


@dataclass
class PackingCollator:
    """Turns a batch of bins (each a list of examples) into packed rows for the model."""

    pad_token_id: int
    pad_to_multiple_of: int | None = 8
    #: Pad every batch to at least this many tokens (``pad_to_sequence_len``: fixed shapes).
    pad_to_length: int | None = None

    def __call__(self, batch: list[list[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        rows = [self._pack(examples) for examples in batch]
        longest = max(max(len(ids) for ids, _, _ in rows), self.pad_to_length or 0)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids, labels, positions = [], [], []
        real_tokens = 0
        for ids, row_labels, row_positions in rows:
            real_tokens += len(ids)
            padding = longest - len(ids)
            input_ids.append(ids + [self.pad_token_id] * padding)
            labels.append(row_labels + [IGNORE_INDEX] * padding)
            positions.append(row_positions + list(range(padding)))
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            REAL_TOKENS_KEY: torch.tensor(real_tokens, dtype=torch.long),
        }

    @staticmethod
    def _pack(examples: list[dict[str, Any]]) -> tuple[list[int], list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for example in examples:
            example_ids = list(example["input_ids"])
            ids.extend(example_ids)
            labels.append(IGNORE_INDEX)  # never predicted from the previous example's last token
            labels.extend(example["labels"][1:])
            positions.extend(range(len(example_ids)))
        return ids, labels, positions


class PackedDataset(torch.utils.data.Dataset):
    """Indexable view whose items are whole bins, for a DataLoader driven by PackedBatchSampler."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, batch: list[list[int]]) -> list[list[dict[str, Any]]]:
        from datasets import Dataset

        if not isinstance(self.data, Dataset):
            return [[self.data[int(i)] for i in bin_indices] for bin_indices in batch]
        # One query for the whole batch: a row at a time costs a query per example.
        columns = self.data[[int(i) for bin_indices in batch for i in bin_indices]]
        examples = iter(
            [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
        )
        return [[next(examples) for _ in bin_indices] for bin_indices in batch]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.data[int(index)]
