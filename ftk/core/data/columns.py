"""Numeric columns of a ``datasets.Dataset`` as numpy arrays, read through arrow.

``dataset["length"]`` gives a ``datasets`` Column whose values come out one Python object per row
(seconds and hundreds of megabytes for a million rows); these helpers read the arrow column in one
piece instead, with the dataset's indices mapping (select, shuffle, split) applied to that column only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from datasets import Dataset


def column_array(data: Dataset, name: str) -> np.ndarray:
    """The numeric column ``name`` of ``data``, in row order, as a numpy array."""
    table = data.select_columns([name]).with_format("arrow")[:]
    return np.asarray(table.column(name).to_numpy())


def as_array(values: Sequence[int] | Any) -> np.ndarray:
    """``values`` (a list, a numpy array or a ``datasets`` Column) as a numpy integer array."""
    if isinstance(values, np.ndarray):
        return values
    from datasets import Dataset
    from datasets.arrow_dataset import Column

    if isinstance(values, Column) and isinstance(values.source, Dataset):
        return column_array(values.source, values.column_name)
    return np.asarray(list(values), dtype=np.int64)
