"""Rows too big to read whole: a text of millions of characters, JSON nested thousands of levels.

A row with a text far longer than ``sequence_len`` could hold is converted with its long texts cut
first, so its fate (dropped, cut, or an error naming it) costs a few thousand characters of
tokenizing, not a minute and gigabytes; the result is the one the whole row gives.  A JSON row
nested deeper than pyarrow reads is one error naming the file and line, before pyarrow sees it
(at 100,000 levels it crashed the process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ftk.cli import main
from ftk.core.config.loader import resolve_strategy
from ftk.core.config.schema import DatasetConfig
from ftk.core.data import tokenize
from ftk.core.data.json_depth import MAX_DEPTH, nesting_problem
from ftk.core.data.sources import load_source
from ftk.core.data.tokenize import INVALID, KEPT, NOTHING_TRAINED, TOO_LONG, TRUNCATED, RowConverter
from ftk.core.errors import FtkError, RowError
from ftk.core.registry import Strategy
from tests.helpers import builtin_manager, first_chat_rows, make_config, write_config

TEXT = "The quick brown fox jumps over the lazy dog, 12 times; then [it] rests. "
SEQUENCE_LEN = 64
LONG = 60_000  # characters: more than the cut for any policy at sequence_len 64 (32,768 at most)


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def long_text(chars: int, unit: str = TEXT) -> str:
    return (unit * (chars // len(unit) + 1))[:chars]


def converter(
    tmp_path: Path, tokenizer, type_: str, policy: str, strategy: Strategy | None = None
) -> RowConverter:
    """The row converter of a ``type_`` dataset at sequence_len 64 with ``excess_length_strategy: policy``."""
    data = tmp_path / "data.jsonl"
    data.touch()
    cfg = make_config(
        sequence_len=SEQUENCE_LEN,
        excess_length_strategy=policy,
        datasets=[{"path": str(data), "type": type_}],
    )
    strategy = strategy or resolve_strategy(builtin_manager().collect_registrations(), type_)
    return RowConverter(strategy, cfg.datasets[0], cfg, tokenizer)


def convert(convert_rows: RowConverter, rows: list[dict], cut: bool = True) -> tuple[list[dict], int]:
    """The examples of ``rows`` (one table row each, as dicts) and the most characters of JSON any
    row handed to the strategy had; ``cut=False`` converts every row whole, as before."""
    if not cut:
        convert_rows.cut_from = sys.maxsize
    seen = [0]
    to_features = convert_rows.to_features

    def recording(row: dict):
        seen[0] = max(seen[0], len(json.dumps(row)))
        return to_features(row)

    convert_rows.to_features = recording
    batch = {key: [row.get(key) for row in rows] for key in rows[0]}
    return convert_rows(batch, list(range(len(rows)))).to_pylist(), seen[0]


# --- a huge text ---------------------------------------------------------------------------------


def test_a_20_mb_row_is_dropped_as_too_long_without_tokenizing_it(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    """Line 3 holds one assistant message of 20 million characters; it was tokenized in full (a
    minute and 3 GB at sequence_len 512), now the strategy sees some 8,000 characters of it."""
    data = tmp_path / "chat.jsonl"
    first_chat_rows(data, 4)
    lines = data.read_text().splitlines(keepends=True)
    huge = json.dumps(chat("Summarise this.", long_text(20_000_000))) + "\n"
    data.write_text("".join([*lines[:2], huge, *lines[2:]]))
    seen = []

    def recording(registry, name):
        strategy = resolve_strategy(registry, name)

        def build(*args):
            to_features = strategy.build(*args)

            def record(row):
                seen.append(len(json.dumps(row)))
                return to_features(row)

            return record

        return replace(strategy, build=build)

    monkeypatch.setattr(tokenize, "resolve_strategy", recording)
    cfg = write_config(tmp_path, tiny_model_dir, data, sequence_len=512, dataset_processes=1)
    capsys.readouterr()
    assert main(["preprocess", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"dropped 1 row: 1 too long ({data}:3)" in out, out
    assert len(seen) == 5 and max(seen) < 100_000, seen


@pytest.mark.parametrize("policy", ["truncate", "drop"])
@pytest.mark.parametrize(
    "make_row",
    [
        lambda: chat("Summarise this.", long_text(LONG)),
        lambda: chat(long_text(LONG), "ok"),
        lambda: chat("Spaces?", long_text(LONG, " ")),
    ],
    ids=["long-answer", "long-question", "long-run-of-spaces"],
)
def test_a_cut_row_gives_what_the_whole_row_gives(tmp_path, tokenizer, policy, make_row):
    rows = [chat("Hi", "Hello"), make_row()]
    whole, whole_seen = convert(converter(tmp_path, tokenizer, "chat_template", policy), rows, cut=False)
    cut, cut_seen = convert(converter(tmp_path, tokenizer, "chat_template", policy), rows)
    assert cut == whole
    assert whole[0]["problem"] == KEPT
    assert whole[1]["problem"] in ((TRUNCATED, NOTHING_TRAINED) if policy == "truncate" else (TOO_LONG,))
    assert whole_seen > LONG > cut_seen


def test_a_long_alpaca_output_is_cut_to_the_same_example(tmp_path, tokenizer):
    rows = [{"instruction": "Repeat.", "input": "", "output": long_text(LONG)}]
    whole, _ = convert(converter(tmp_path, tokenizer, "alpaca", "truncate"), rows, cut=False)
    cut, seen = convert(converter(tmp_path, tokenizer, "alpaca", "truncate"), rows)
    assert cut == whole and whole[0]["problem"] == TRUNCATED and len(whole[0]["input_ids"]) == SEQUENCE_LEN
    assert seen < LONG


def test_a_long_text_the_strategy_does_not_use_keeps_the_row(tmp_path, tokenizer):
    """The cut row's example fits: the text never reached it, and the row is kept as it is."""
    rows = [{"instruction": "2+2?", "input": "", "output": "4", "notes": long_text(LONG)}]
    (example,), _ = convert(converter(tmp_path, tokenizer, "alpaca", "drop"), rows)
    (plain,), _ = convert(converter(tmp_path, tokenizer, "alpaca", "drop"), [{**rows[0], "notes": ""}])
    assert example["problem"] == KEPT and example == plain


def test_a_long_document_is_still_split_into_every_chunk(tmp_path, tokenizer):
    rows = [{"text": long_text(LONG)}, {"text": long_text(LONG // 2)}]
    whole, _ = convert(converter(tmp_path, tokenizer, "completion", "drop"), rows, cut=False)
    cut, _ = convert(converter(tmp_path, tokenizer, "completion", "drop"), rows)
    assert cut == whole and len(whole) > 100


def test_a_row_the_cut_makes_invalid_is_converted_whole(tmp_path, tokenizer):
    """A strategy that reads JSON from a text: the cut breaks it, so the whole row decides."""

    def build(dataset, tokenizer_, cfg):
        def to_features(row):
            try:
                payload = json.loads(row["payload"])
            except ValueError:
                raise RowError("payload: not JSON") from None
            ids = [1] * min(len(payload["words"]), 8)
            return {"input_ids": ids, "labels": ids}

        return to_features

    strategy = Strategy(name="payload", build=build)
    rows = [{"payload": json.dumps({"words": long_text(LONG)})}]
    (example,), _ = convert(converter(tmp_path, tokenizer, "alpaca", "drop", strategy), rows)
    assert example["problem"] == KEPT and len(example["input_ids"]) == 8
    assert example["problem"] != INVALID


def test_raise_names_the_row_without_tokenizing_all_of_it(tmp_path, tokenizer):
    rows = [chat("Hi", "Hello"), chat("Summarise this.", long_text(2_000_000))]
    with pytest.raises(FtkError) as caught:
        convert(converter(tmp_path, tokenizer, "chat_template", "raise"), rows)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'data.jsonl'}:2: at least ")
    assert message.endswith(
        "tokens (a text of 2,000,000 characters), more than sequence_len 64 (excess_length_strategy: raise)"
    )


# --- deep JSON ---------------------------------------------------------------------------------

GOOD_LINE = json.dumps(chat("Hi", "Hello"))


def deep_arrays(levels: int) -> str:
    return '{"messages": ' + "[" * levels + "]" * levels + "}"


def deep_objects(levels: int) -> str:
    return json.dumps(chat("Hi", "Hello"))[:-1] + ', "meta": ' + '{"a": ' * levels + "1" + "}" * levels + "}"


def test_a_row_nested_100000_levels_is_one_error_naming_the_line(tmp_path, tiny_model_dir, capsys):
    """It was a RecursionError traceback."""
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([GOOD_LINE, deep_arrays(100_000), GOOD_LINE]) + "\n")
    cfg = write_config(tmp_path, tiny_model_dir, data, sequence_len=64)
    capsys.readouterr()
    assert main(["preprocess", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"error: {data}:2: nested 100,001 levels deep (arrays and objects); a row may nest 63 at most"
    )
    assert not (tmp_path / "prepared").exists() or not any((tmp_path / "prepared").iterdir())


def test_deep_objects_no_longer_crash_the_process(tmp_path):
    """pyarrow crashed (a segmentation fault) reading this file: loaded in a process of its own."""
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([GOOD_LINE, GOOD_LINE, deep_objects(100_000)]) + "\n")
    script = (
        "import sys\n"
        "from ftk.core.config.schema import DatasetConfig\n"
        "from ftk.core.data.sources import load_source\n"
        "from ftk.core.errors import FtkError\n"
        "try:\n"
        "    load_source(DatasetConfig(path=sys.argv[1]), 'datasets[0]')\n"
        "except FtkError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(data)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (
        f"{data}:3: nested 100,001 levels deep (arrays and objects); a row may nest 63 at most"
    )


def test_the_deepest_row_pyarrow_reads_loads_and_one_level_more_is_named(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join([GOOD_LINE, deep_arrays(MAX_DEPTH - 1)]) + "\n")
    assert len(load_source(DatasetConfig(path=str(data)), "datasets[0]")) == 2
    data.write_text("\n".join([GOOD_LINE, deep_arrays(MAX_DEPTH)]) + "\n")
    with pytest.raises(FtkError, match=r"data.jsonl:2: nested 64 levels deep"):
        load_source(DatasetConfig(path=str(data)), "datasets[0]")


def test_brackets_inside_strings_are_not_nesting(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(chat("[" * 5000 + '{"' * 100, "]" * 70)) + "\n" + GOOD_LINE + "\n")
    assert nesting_problem(data) is None
    assert len(load_source(DatasetConfig(path=str(data)), "datasets[0]")) == 2


def test_a_deep_row_in_a_json_array_or_a_folder_is_named(tmp_path):
    array = tmp_path / "rows.json"
    array.write_text("[" + GOOD_LINE + ",\n" + deep_objects(5000) + "]\n")
    with pytest.raises(FtkError, match=r"rows.json:2: nested 5,001 levels deep"):
        load_source(DatasetConfig(path=str(array)), "datasets[0]")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.jsonl").write_text(GOOD_LINE + "\n")
    (folder / "b.jsonl").write_text(GOOD_LINE + "\n" + deep_arrays(1000) + "\n")
    with pytest.raises(FtkError, match=r"folder/b.jsonl:2: nested 1,001 levels deep"):
        load_source(DatasetConfig(path=str(folder)), "datasets[0]")
