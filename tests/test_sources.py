"""Data sources: every local format, saved datasets folders, and the folder/Hub road with splits."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict

from ftk.core.config.schema import DatasetConfig
from ftk.core.data.sources import load_source, source_fingerprint
from ftk.core.errors import FtkError

ROWS = [
    {"instruction": "Say hi", "output": "hi"},
    {"instruction": "Count to two", "output": "one, two"},
    {"instruction": "Name a colour", "output": "blue"},
]


def load(path: Path | str, **fields) -> Dataset:
    return load_source(DatasetConfig(path=str(path), **fields), "datasets[0]")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_local_files_of_each_format(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    frame = pd.DataFrame(ROWS)
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    elif suffix == ".json":
        path.write_text(json.dumps(ROWS))
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    loaded = load(path)
    assert loaded.to_list() == ROWS


def test_unknown_extension_needs_ds_type(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    with pytest.raises(FtkError, match=r"datasets\[0\]\.path: cannot tell the format .*; set ds_type"):
        load(path)
    assert load(path, ds_type="json").to_list() == ROWS


def test_saved_dataset_folders(tmp_path):
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    assert load(tmp_path / "single").to_list() == ROWS

    DatasetDict({"train": Dataset.from_list(ROWS[:2]), "test": Dataset.from_list(ROWS[2:])}).save_to_disk(
        str(tmp_path / "dict")
    )
    assert load(tmp_path / "dict", split="test").to_list() == ROWS[2:]
    with pytest.raises(FtkError, match="split: 'validation' not in .* \\(has train, test\\)"):
        load(tmp_path / "dict", split="validation")


def test_data_folder_takes_the_hub_road_with_split_and_data_files(tmp_path):
    folder = tmp_path / "repo"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    (folder / "data" / "test.jsonl").write_text(json.dumps(ROWS[2]) + "\n")
    assert load(folder).to_list() == ROWS[:2]
    assert load(folder, split="test").to_list() == ROWS[2:]
    assert load(folder, data_files="data/test.jsonl").to_list() == ROWS[2:]


def test_missing_path_is_a_clean_error(tmp_path):
    with pytest.raises(FtkError, match=r"datasets\[0\]\.path: no such file or directory: '.*missing.jsonl'"):
        load(tmp_path / "missing.jsonl")


def test_malformed_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(FtkError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    )


def test_fingerprint_follows_the_bytes(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    entry = DatasetConfig(path=str(path))
    first = source_fingerprint(entry, load(path))
    assert source_fingerprint(entry, load(path)) == first
    path.write_text(path.read_text().replace("blue", "blua"))  # one byte, same size
    assert source_fingerprint(entry, load(path)) != first
