"""Which examples share a packed row: bins of at most ``capacity`` tokens, from the lengths alone.

The shapes (which lengths share a bin) are the better of best-fit decreasing (bins kept in
buckets by remaining room, O(log capacity) a placement) and, for up to ``EXACT_FILL_MAX_ROWS``
examples, an exact fill that tops up each bin by subset sum. A seeded shuffle then decides which
example takes each slot among those of equal length. Lengths and bins are numpy arrays (a
million examples cost megabytes, not Python objects); this module needs no torch, so the data
pipeline can summarise packing without importing it. ``ftk.core.data.packing`` deals the bins
out to ranks and batches.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import random
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ftk.core.data.columns import as_array

EXACT_FILL_MAX_ROWS = 20_000


@dataclass(frozen=True)
class BinShapes:
    """Which lengths share a bin: bin ``b`` holds ``sizes[starts[b]:starts[b + 1]]``.

    Arrays rather than a list per bin, so a million examples cost a few megabytes.
    """

    sizes: np.ndarray
    starts: np.ndarray

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        sizes, starts = self.sizes.tolist(), self.starts.tolist()
        for b in range(len(self)):
            yield tuple(sizes[starts[b] : starts[b + 1]])

    @classmethod
    def from_bins(cls, bins: Sequence[Sequence[int]]) -> BinShapes:
        """From one list of sizes per bin."""
        counts = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
        starts = np.zeros(len(bins) + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        sizes = np.fromiter((size for b in bins for size in b), dtype=np.int64, count=int(starts[-1]))
        return cls(sizes, starts)


def _best_fit_decreasing(lengths: np.ndarray, capacity: int) -> BinShapes:
    """Each size, longest first, into the fullest bin with room (a new bin when none has)."""
    sizes, counts = np.unique(lengths, return_counts=True)
    bin_of = array.array("q")  # the bin of each size placed, in placement order
    rooms_of: list[int] = []  # remaining room of each bin
    by_room: dict[int, list[int]] = {}  # remaining room -> bins with exactly that room
    rooms: list[int] = []  # sorted distinct keys of by_room
    for size, count in zip(sizes[::-1].tolist(), counts[::-1].tolist(), strict=True):
        for _ in range(count):
            position = bisect.bisect_left(rooms, size)
            if position == len(rooms):
                target = len(rooms_of)
                rooms_of.append(capacity)
            else:
                room = rooms[position]
                target = by_room[room].pop()
                if not by_room[room]:
                    del by_room[room]
                    rooms.pop(position)
            room = rooms_of[target] = rooms_of[target] - size
            bin_of.append(target)
            if room > 0:
                if room not in by_room:
                    by_room[room] = []
                    bisect.insort(rooms, room)
                by_room[room].append(target)
    placed = np.repeat(sizes[::-1], counts[::-1])
    assignment = np.frombuffer(bin_of, dtype=np.int64)
    order = np.argsort(assignment, kind="stable")  # by bin, in placement order within a bin
    starts = np.zeros(len(rooms_of) + 1, dtype=np.int64)
    np.cumsum(np.bincount(assignment, minlength=len(rooms_of)), out=starts[1:])
    return BinShapes(placed[order], starts)


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


_SHAPES: OrderedDict[tuple[bytes, int], BinShapes] = OrderedDict()
_SHAPES_KEPT = 4


def bin_shapes(lengths: Sequence[int] | np.ndarray, capacity: int) -> BinShapes:
    """Which lengths share a bin: the fewer bins of best-fit decreasing and exact fill.

    Depends on the lengths alone, so it is computed once per (lengths, capacity): the data
    pipeline's packing summary and the trainer's sampler share the result. Exact fill is tried
    up to ``EXACT_FILL_MAX_ROWS`` examples (it costs about half a second per 2,000); best-fit
    decreasing always.
    """
    values = as_array(lengths).astype(np.int64, copy=False)
    key = (hashlib.blake2b(values.tobytes(), digest_size=16).digest(), capacity)
    shapes = _SHAPES.get(key)
    if shapes is None:
        shapes = _compute_shapes(values, capacity)
        _SHAPES[key] = shapes
        while len(_SHAPES) > _SHAPES_KEPT:
            _SHAPES.popitem(last=False)
    _SHAPES.move_to_end(key)
    return shapes


def _compute_shapes(lengths: np.ndarray, capacity: int) -> BinShapes:
    over = np.flatnonzero(lengths > capacity)
    if len(over):
        too_long = int(over[0])
        raise ValueError(
            f"example {too_long} has {lengths[too_long]} tokens, more than the bin capacity {capacity}"
        )
    shapes = _best_fit_decreasing(lengths, capacity)
    if len(lengths) <= EXACT_FILL_MAX_ROWS:
        exact = _exact_fill(lengths.tolist(), capacity)
        if len(exact) < len(shapes):
            shapes = BinShapes.from_bins(exact)
    return shapes


def assign_slots(shapes: BinShapes, lengths: np.ndarray, seed: int) -> np.ndarray:
    """The example in each slot of ``shapes`` (flat, in slot order); ``seed`` picks among equal lengths.

    Each length's examples, in index order, are shuffled with one ``random.Random(seed)``, lengths
    taken in the order they first occur; the slots of that length take them from the last one back.
    """
    order = np.argsort(lengths, kind="stable")  # examples by length, in index order within a length
    values, firsts, counts = np.unique(lengths[order], return_index=True, return_counts=True)
    slot_order = np.argsort(shapes.sizes, kind="stable")  # slots by size, in slot order within a size
    slot_sizes = shapes.sizes[slot_order]
    lows = np.searchsorted(slot_sizes, values, side="left")
    highs = np.searchsorted(slot_sizes, values, side="right")
    examples = np.empty(len(shapes.sizes), dtype=np.int64)
    rng = random.Random(seed)
    for group in np.argsort(order[firsts], kind="stable").tolist():
        start = int(firsts[group])
        indices = order[start : start + int(counts[group])].tolist()
        rng.shuffle(indices)
        low, high = int(lows[group]), int(highs[group])
        examples[slot_order[low:high]] = indices[::-1][: high - low]
    return examples


def split_bins(flat: np.ndarray, starts: np.ndarray) -> list[list[int]]:
    """``flat[starts[b]:starts[b + 1]]`` for every bin ``b``, as lists."""
    values, bounds = flat.tolist(), starts.tolist()
    return [values[bounds[b] : bounds[b + 1]] for b in range(len(bounds) - 1)]


def assign_examples(
    shapes: BinShapes | Sequence[Sequence[int]], lengths: Sequence[int] | np.ndarray, seed: int
) -> list[list[int]]:
    """Fill each slot of ``shapes`` with an example of that length; ``seed`` decides which one."""
    if not isinstance(shapes, BinShapes):
        shapes = BinShapes.from_bins(shapes)
    return split_bins(assign_slots(shapes, as_array(lengths), seed), shapes.starts)


def pack_lengths(lengths: Sequence[int] | np.ndarray, capacity: int, seed: int = 0) -> list[list[int]]:
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
