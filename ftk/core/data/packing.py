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

import bisect
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ftk.core.lm import IGNORE_INDEX

EXACT_FILL_MAX_ROWS = 20_000
#: Batch key with the number of real (non-padding) tokens; the trainer removes it before the model.
REAL_TOKENS_KEY = "num_real_tokens"


def _best_fit_decreasing(sizes: list[int], capacity: int) -> list[list[int]]:
    """Bins of sizes (already sorted longest first): each size into the fullest bin with room."""
    bins: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # remaining room -> bins with exactly that room
    rooms: list[int] = []  # sorted distinct keys of by_room
    for size in sizes:
        position = bisect.bisect_left(rooms, size)
        if position == len(rooms):
            bins.append([size])
            target, room = len(bins) - 1, capacity - size
        else:
            room = rooms[position]
            target = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(position)
            bins[target].append(size)
            room -= size
        if room > 0:
            if room not in by_room:
                by_room[room] = []
                bisect.insort(rooms, room)
            by_room[room].append(target)
    return bins


def _exact_fill(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins opened with the largest size left, then filled by the subset of sizes that best fills them.

    The subset is a bounded subset-sum over the remaining sizes (a bitset over the room, one step
    per copy of a size; each sum remembers the size that first reached it, so following those
    back uses every copy at most once).
    """
    counts = Counter(sizes)
    bins: list[list[int]] = []

    def take(size: int) -> None:
        counts[size] -= 1
        if not counts[size]:
            del counts[size]

    while counts:
        first = max(counts)
        take(first)
        room = capacity - first
        reach = np.zeros(room + 1, dtype=bool)
        reach[0] = True
        parent = np.zeros(room + 1, dtype=np.int64)
        for size in sorted(counts):
            if size > room:
                break
            for _ in range(min(counts[size], room // size)):
                new = np.zeros_like(reach)
                new[size:] = reach[:-size] & ~reach[size:]
                if not new.any():
                    break
                parent[new] = size
                reach |= new
        total = int(np.flatnonzero(reach)[-1])
        items = [first]
        while total:
            size = int(parent[total])
            items.append(size)
            take(size)
            total -= size
        bins.append(items)
    return bins


def bin_shapes(lengths: Sequence[int], capacity: int) -> tuple[tuple[int, ...], ...]:
    """Which lengths share a bin: the fewer bins of best-fit decreasing and exact fill.

    Depends on the lengths alone, so it is computed once per (lengths, capacity): the data
    pipeline's packing summary and the trainer's sampler share the result. Exact fill is tried
    up to ``EXACT_FILL_MAX_ROWS`` examples (it costs about half a second per 2,000); best-fit
    decreasing always.
    """
    return _bin_shapes(tuple(lengths), capacity)


@lru_cache(maxsize=4)
def _bin_shapes(lengths: tuple[int, ...], capacity: int) -> tuple[tuple[int, ...], ...]:
    too_long = next((i for i, n in enumerate(lengths) if n > capacity), None)
    if too_long is not None:
        raise ValueError(
            f"example {too_long} has {lengths[too_long]} tokens, more than the bin capacity {capacity}"
        )
    shapes = _best_fit_decreasing(sorted(lengths, reverse=True), capacity)
    if len(lengths) <= EXACT_FILL_MAX_ROWS:
        exact = _exact_fill(lengths, capacity)
        if len(exact) < len(shapes):
            shapes = exact
    return tuple(tuple(shape) for shape in shapes)


def assign_examples(shapes: Sequence[Sequence[int]], lengths: Sequence[int], seed: int) -> list[list[int]]:
    """Fill each slot of ``shapes`` with an example of that length; ``seed`` decides which one."""
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(length, []).append(index)
    rng = random.Random(seed)
    for indices in by_length.values():
        rng.shuffle(indices)
    return [[by_length[size].pop() for size in shape] for shape in shapes]


def pack_lengths(lengths: Sequence[int], capacity: int, seed: int = 0) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins whose total length is at most ``capacity``.

    The bins' shapes come from the lengths alone (``bin_shapes``), so every epoch has the same
    number of bins; ``seed`` decides which example fills each slot among those of equal length.
    """
    return assign_examples(bin_shapes(lengths, capacity), lengths, seed)


def packing_efficiency(bins: list[list[int]], lengths: Sequence[int], capacity: int) -> float:
    """Real tokens over token slots: the share of packed rows that is not padding."""
    if not bins:
        return 0.0
    return sum(lengths[i] for b in bins for i in b) / (len(bins) * capacity)


class PackedBatchSampler:
    """Batches of ``micro_batch_size`` bins for one rank (the last may hold fewer); reshuffled per epoch."""

    def __init__(
        self,
        lengths: Sequence[int],
        capacity: int,
        micro_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        self.lengths = list(lengths)
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

    def bins(self) -> list[list[int]]:
        """All bins of the current epoch, in the order they are dealt out."""
        seed = self.seed + self.epoch if self.shuffle else self.seed
        bins = assign_examples(self.shapes, self.lengths, seed)
        if self.shuffle:
            random.Random(seed).shuffle(bins)
        return bins

    @property
    def bins_per_rank(self) -> int:
        """Every rank gets this many bins; at most ``world_size - 1`` bins sit out an epoch."""
        return self.num_bins // self.world_size

    def __len__(self) -> int:
        return -(-self.bins_per_rank // self.micro_batch_size)

    def __iter__(self) -> Iterator[list[list[int]]]:
        mine = self.bins()[self.rank :: self.world_size][: self.bins_per_rank]
        for start in range(0, len(mine), self.micro_batch_size):
            yield mine[start : start + self.micro_batch_size]


@dataclass
class PackingCollator:
    """Turns a batch of bins (each a list of examples) into packed rows for the model."""

    pad_token_id: int
    pad_to_multiple_of: int | None = 8

    def __call__(self, batch: list[list[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        rows = [self._pack(examples) for examples in batch]
        longest = max(len(ids) for ids, _, _ in rows)
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
        return [[self.data[int(i)] for i in bin_indices] for bin_indices in batch]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.data[int(index)]
