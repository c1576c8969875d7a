"""Data preparation: counts, dropped rows, a cache that is never stale, errors that name the row."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.data.collate import PaddingCollator
from ftk.core.data.pipeline import prepare_data
from ftk.core.errors import FtkError
from tests.helpers import write_config

ROWS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]},
    {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye"}]},
    {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]},
    {"messages": [{"role": "user", "content": "only a question"}]},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# Data preparation only: rows of up to 64 tokens, no training keys.
BASE = dict(sequence_len=64, micro_batch_size=None, max_steps=None, seed=None)


def prepare(cfg_path: Path, tokenizer):
    cfg, manager = load_config(cfg_path)
    return prepare_data(cfg, tokenizer, manager.collect_registrations())


def test_rows_are_counted_and_filtered(tmp_path, tiny_model_dir, tokenizer):
    data = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    prepared = prepare(write_config(tmp_path, tiny_model_dir, data, **BASE), tokenizer)
    (stats,) = prepared.sources
    assert (stats.rows, stats.kept, stats.too_long, stats.nothing_trained) == (4, 2, 1, 1)
    # "Hello there" + <|im_end|> (3 tokens) and "Bye" + <|im_end|> (3 tokens) are the trained tokens.
    assert stats.trained_tokens == 6
    assert len(prepared.train) == 2
    assert sorted(len(row) for row in prepared.train["input_ids"]) == [13, 14]
    assert stats.tokens == 27


def test_cache_is_reused_and_invalidated_by_data_or_tokenizer_changes(tmp_path, tiny_model_dir, tokenizer):
    data = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    cfg = write_config(tmp_path, tiny_model_dir, data, **BASE)
    first = prepare(cfg, tokenizer)
    again = prepare(cfg, tokenizer)
    assert (first.from_cache, again.from_cache) == (False, True)
    assert again.cache_dir == first.cache_dir
    assert again.train["input_ids"] == first.train["input_ids"]

    # Same size, same name, different content: a new cache entry.
    write_jsonl(data, [ROWS[1], ROWS[0], ROWS[2], ROWS[3]][::-1])
    changed = prepare(cfg, tokenizer)
    assert not changed.from_cache and changed.cache_dir != first.cache_dir

    other_template = AutoTokenizer.from_pretrained(tiny_model_dir)
    other_template.chat_template = other_template.chat_template.replace("\\n", "\\n\\n", 1)
    assert prepare(cfg, other_template).cache_dir != changed.cache_dir


def test_settings_change_the_cache_key(tmp_path, tiny_model_dir, tokenizer):
    data = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    base = prepare(write_config(tmp_path, tiny_model_dir, data, **BASE), tokenizer).cache_dir
    inputs = prepare(write_config(tmp_path, tiny_model_dir, data, train_on_inputs=True, **BASE), tokenizer)
    assert inputs.cache_dir != base and not inputs.from_cache


def test_bad_row_names_file_row_and_field(tmp_path, tiny_model_dir, tokenizer):
    data = write_jsonl(tmp_path / "chat.jsonl", [ROWS[0], {"messages": [{"role": "user", "content": 3}]}])
    with pytest.raises(FtkError) as info:
        prepare(write_config(tmp_path, tiny_model_dir, data, **BASE), tokenizer)
    assert str(info.value) == f"{data}:2: messages[0].content: must be text, got int"


def test_cli_bad_row_exits_2_and_writes_nothing_to_output_dir(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", [ROWS[0], {"conversation": []}])
    cfg = write_config(tmp_path, tiny_model_dir, data, **{**BASE, "adapter": "lora", "max_steps": 1})
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    # Only the tokenizing progress bar may precede the one-line error.
    assert err.splitlines()[-1] == f"error: {data}:2: messages: missing or null"
    assert "Traceback" not in err and err.count("error:") == 1
    assert not (tmp_path / "out").exists()


def test_missing_data_file_is_a_clean_error(tmp_path, tiny_model_dir, tokenizer):
    cfg = write_config(tmp_path, tiny_model_dir, tmp_path / "nope.jsonl", **BASE)
    with pytest.raises(FtkError, match=r"datasets\[0\]\.path: no such file or directory"):
        prepare(cfg, tokenizer)


def test_val_set_size_splits_rows(tmp_path, tiny_model_dir, tokenizer):
    rows = [ROWS[0], ROWS[1]] * 10
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    prepared = prepare(write_config(tmp_path, tiny_model_dir, data, val_set_size=0.25, **BASE), tokenizer)
    assert (len(prepared.train), len(prepared.eval)) == (15, 5)


def test_collator_pads_ids_masks_and_labels():
    batch = PaddingCollator(pad_token_id=0, pad_to_multiple_of=4)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


BAD_ROWS = [
    ROWS[0],
    {"messages": [{"role": "user", "content": 3}]},
    {"conversation": []},
    {"messages": [{"role": "robot", "content": "beep"}]},
    ROWS[1],
]


def test_invalid_rows_skip_counts_and_keeps_examples_of_the_problem(tmp_path, tiny_model_dir, tokenizer):
    data = write_jsonl(tmp_path / "chat.jsonl", BAD_ROWS)
    prepared = prepare(write_config(tmp_path, tiny_model_dir, data, invalid_rows="skip", **BASE), tokenizer)
    (stats,) = prepared.sources
    assert (stats.rows, stats.kept, stats.invalid) == (5, 2, 3)
    assert stats.invalid_examples == [
        f"{data}:2: messages[0].content: must be text, got int",
        f"{data}:3: messages: missing or null",
        f"{data}:4: messages[0].role: unknown role 'robot'; map it with `roles:`",
    ]


def test_excess_length_truncate_and_raise(tmp_path, tiny_model_dir, tokenizer):
    long_answer = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "yes " * 100}]
    }
    data = write_jsonl(tmp_path / "chat.jsonl", [ROWS[0], long_answer])
    truncated = prepare(
        write_config(tmp_path, tiny_model_dir, data, excess_length_strategy="truncate", **BASE), tokenizer
    )
    (stats,) = truncated.sources
    assert (stats.kept, stats.truncated, stats.too_long) == (2, 1, 0)
    assert sorted(len(ids) for ids in truncated.train["input_ids"]) == [13, 64]

    with pytest.raises(FtkError) as info:
        prepare(
            write_config(tmp_path, tiny_model_dir, data, excess_length_strategy="raise", **BASE), tokenizer
        )
    assert (
        str(info.value) == f"{data}:2: 112 tokens, more than sequence_len 64 (excess_length_strategy: raise)"
    )


def test_max_samples_and_test_datasets(tmp_path, tiny_model_dir, tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", [ROWS[0], ROWS[1]] * 5)
    held_out = write_jsonl(tmp_path / "eval.jsonl", [ROWS[1]] * 3)
    cfg = write_config(
        tmp_path,
        tiny_model_dir,
        [{"path": train, "max_samples": 4}],
        test_datasets=[{"path": held_out}],
        **BASE,
    )
    prepared = prepare(cfg, tokenizer)
    assert (len(prepared.train), len(prepared.eval)) == (4, 3)
    assert [s.rows for s in prepared.eval_sources] == [3]


def test_preprocess_json_reports_counts_and_cache(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    cfg = write_config(tmp_path, tiny_model_dir, data, **BASE)
    assert main(["preprocess", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["train_rows"], report["tokens"], report["trained_tokens"]) == (2, 27, 6)
    (source,) = report["datasets"]
    assert (source["too_long"], source["nothing_trained"]) == (1, 1)
    assert report["from_cache"] is False
    cached = datasets.load_from_disk(str(Path(report["cache_dir"]) / "train"))
    assert {"input_ids", "labels"} <= set(cached.column_names)

    assert main(["preprocess", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["from_cache"] is True


def test_debug_view_marks_trained_tokens_and_warns(tmp_path, tiny_model_dir, tokenizer, capsys):
    from ftk.commands.preprocess_debug import row_warnings

    good = {"input_ids": [151644, 13048, 151645], "labels": [-100, 13048, 151645]}
    assert row_warnings(good, tokenizer) == []
    no_eot = {"input_ids": [151644, 13048, 151645], "labels": [-100, 13048, -100]}
    assert row_warnings(no_eot, tokenizer) == ["end-of-turn token <|im_end|> at position 2 is not trained"]

    data = write_jsonl(tmp_path / "chat.jsonl", [ROWS[0]])
    assert main(["preprocess", str(write_config(tmp_path, tiny_model_dir, data, **BASE)), "--debug"]) == 0
    out = capsys.readouterr().out
    assert "row 0: 13 tokens, 3 trained" in out
    assert "Hello[9707]" in out and "<|im_end|>[151645]" in out


def test_custom_strategy_function_runs_through_the_pipeline(tmp_path, tiny_model_dir, tokenizer):
    data = write_jsonl(tmp_path / "docs.jsonl", [{"body": "quiet words"}])
    shout = {"path": data, "type": "tests.fixture_plugins.custom_strategy.shout", "field": "body"}
    cfg = write_config(tmp_path, tiny_model_dir, [shout], **BASE)
    prepared = prepare(cfg, tokenizer)
    assert prepared.train["input_ids"] == [tokenizer("QUIET WORDS", add_special_tokens=False)["input_ids"]]


def test_tokenizer_change_misses_the_cache(tmp_path, tiny_model_dir, tokenizer):
    data = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    cfg = write_config(tmp_path, tiny_model_dir, data, **BASE)
    first = prepare(cfg, tokenizer)
    grown = AutoTokenizer.from_pretrained(tiny_model_dir)
    grown.add_special_tokens({"additional_special_tokens": ["<|new_token|>"]})
    changed = prepare(cfg, grown)
    assert not changed.from_cache and changed.cache_dir != first.cache_dir


STRATEGY = """
def build(dataset, tokenizer, cfg):
    def to_features(row):
        ids = tokenizer(row["text"]{change}, add_special_tokens=False)["input_ids"]
        return {{"input_ids": ids, "labels": ids}}

    return to_features
"""


def test_editing_a_custom_strategy_prepares_the_data_again(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    """The cache key covers the code of the file that defines a ``type: module.function`` strategy."""
    import importlib
    import sys

    module_dir = tmp_path / "code"
    module_dir.mkdir()
    (module_dir / "my_strategy.py").write_text(STRATEGY.format(change=""), encoding="utf-8")
    monkeypatch.syspath_prepend(str(module_dir))
    data = write_jsonl(tmp_path / "notes.jsonl", [{"text": "hello world"}, {"text": "second note"}])
    mine = {"path": data, "type": "my_strategy.build"}
    cfg = write_config(tmp_path, tiny_model_dir, [mine], **{**BASE, "sequence_len": None})
    first = prepare(cfg, tokenizer)
    assert prepare(cfg, tokenizer).from_cache  # unchanged code: the cache is reused

    (module_dir / "my_strategy.py").write_text(STRATEGY.format(change=".upper()"), encoding="utf-8")
    importlib.reload(sys.modules["my_strategy"])
    edited = prepare(cfg, tokenizer)
    assert edited.cache_dir != first.cache_dir and not edited.from_cache
    assert tokenizer("HELLO WORLD", add_special_tokens=False)["input_ids"] in edited.train["input_ids"]
    assert tokenizer("hello world", add_special_tokens=False)["input_ids"] not in edited.train["input_ids"]
