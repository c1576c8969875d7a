"""Eval data split over processes: every row once, the same number of rows on every rank."""

from __future__ import annotations

import pytest
from datasets import Dataset

from ftk.core.data.collate import PaddingCollator
from ftk.core.evaluate import _rank_share, trained_token_count


@pytest.mark.parametrize(("rows", "world_size"), [(7, 2), (8, 4), (5, 3), (1, 2)])
def test_rank_shares_cover_each_row_once_and_have_equal_length(rows, world_size):
    data = Dataset.from_dict(
        {
            "input_ids": [[i + 1] * (i % 3 + 2) for i in range(rows)],
            "labels": [[i + 1] * (i % 3 + 2) for i in range(rows)],
            "attention_mask": [[1] * (i % 3 + 2) for i in range(rows)],
        }
    )
    shares = [_rank_share(data, rank, world_size) for rank in range(world_size)]
    assert len({len(share) for share in shares}) == 1
    trained_rows = [tuple(row) for share in shares for row in share["labels"] if row[0] != -100]
    assert sorted(trained_rows) == sorted(tuple(row) for row in data["labels"])
    collate = PaddingCollator(pad_token_id=0)
    total = sum(int(trained_token_count(collate(list(share))["labels"])) for share in shares)
    assert total == sum(len(row) - 1 for row in data["labels"])  # padding rows add no trained token
