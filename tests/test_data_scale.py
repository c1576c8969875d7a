"""Real data sizes: tokenizing in several processes gives the rows of one, from the CLI, at 100,000 rows.

Workers receive the row converter by pickle: a forked worker finds the converter built in the
parent, any other worker rebuilds it from the strategy, dataset entry, config and tokenizer
(``_workers_fork`` patched to False forces that road here).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import datasets
import numpy as np
import pytest

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.data import tokenize
from ftk.core.data.columns import column_array
from ftk.core.data.packing import PackedBatchSampler, bin_shapes
from ftk.core.data.tokenize import BYTES_PER_PROCESS, tokenizing_processes
from tests.helpers import REPO, SMALL_LORA, first_chat_rows, make_config, write_config

QA_DATA = REPO / "examples" / "plugins" / "ftk-example-plugin" / "data" / "capitals_qa.jsonl"
WORDS = "alpha beta gamma delta apple river stone cloud quick brown fox jumps over the lazy dog".split()


def _example_plugin_installed() -> bool:
    try:
        distribution("ftk-example-plugin")
    except PackageNotFoundError:
        return os.environ.get("FTK_REQUIRE_EXAMPLE_PLUGIN") == "1"  # then the test fails, as it should
    return True


def write_short_chats(path: Path, rows: int) -> Path:
    """``rows`` generated two-message conversations of a few words each (one in 1,000 of 40 words)."""
    rng = random.Random(0)
    with path.open("w") as out:
        for index in range(rows):
            words = 40 if index % 1000 == 999 else rng.randint(2, 8)  # one row in 1,000 is long
            question = " ".join(rng.choice(WORDS) for _ in range(words))
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
            messages = [
                {"role": "user", "content": f"{index}: {question}?"},
                {"role": "assistant", "content": answer},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def preprocess(cfg: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """``ftk preprocess CFG --json``: exit code 0, and its summary."""
    code = main(["preprocess", str(cfg), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return json.loads(captured.out.strip().splitlines()[-1])


def prepared_rows(summary: dict) -> dict[str, datasets.Dataset]:
    """The train (and eval) sets the summary's cache folder holds."""
    folder = Path(summary["cache_dir"])
    return {
        split: datasets.load_from_disk(str(folder / split))
        for split in ("train", "eval")
        if (folder / split).is_dir()
    }


def assert_same_rows(one: dict, other: dict) -> None:
    """The same counts and, split by split, the same rows in the same order (every column)."""
    strip = ("cache_dir", "from_cache")
    assert {k: v for k, v in one.items() if k not in strip} == {
        k: v for k, v in other.items() if k not in strip
    }
    first, second = prepared_rows(one), prepared_rows(other)
    assert first.keys() == second.keys()
    for split in first:
        a, b = first[split].with_format("arrow")[:], second[split].with_format("arrow")[:]
        assert a.column_names == b.column_names
        assert a.equals(b), f"{split}: rows differ between process counts"


def _configs(tmp_path: Path, model: Path, data, counts=(1, 2), **keys) -> list[Path]:
    return [
        write_config(
            tmp_path,
            model,
            data,
            name=f"p{processes}.yaml",
            dataset_processes=processes,
            dataset_prepared_path=tmp_path / f"prepared-{processes}",
            **keys,
        )
        for processes in counts
    ]


# Data preparation only: no training keys.
DATA_ONLY = dict(micro_batch_size=None, max_steps=None)


def test_two_processes_through_the_cli_give_the_rows_of_one(tmp_path, tiny_model_dir, capsys):
    data = first_chat_rows(tmp_path / "chat.jsonl", 40)
    one, two = (
        preprocess(cfg, capsys)
        for cfg in _configs(tmp_path, tiny_model_dir, data, sequence_len=256, val_set_size=0.1, **DATA_ONLY)
    )
    assert one["datasets"][0]["too_long"] > 0 and one["train_rows"] > 0 and one["eval_rows"] > 0
    assert_same_rows(one, two)
    # The entry and the folder of lock files (ftk.core.data.cache): no staging folder left.
    entry = Path(two["cache_dir"]).name
    assert sorted(path.name for path in (tmp_path / "prepared-2").iterdir()) == [".locks", entry]


def test_strategies_rebuilt_in_workers_give_the_rows_of_one(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """A ``module.function`` strategy and a plugin's registered one, sent to workers by pickle."""
    monkeypatch.setattr(tokenize, "_workers_fork", lambda: False)
    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(json.dumps({"body": f"note number {i}"}) + "\n" for i in range(30)))
    entries = [{"path": notes, "type": "tests.fixture_plugins.custom_strategy.shout", "field": "body"}]
    if _example_plugin_installed():
        entries.append({"path": QA_DATA, "type": "qa_pairs"})
    one, two = (preprocess(cfg, capsys) for cfg in _configs(tmp_path, tiny_model_dir, entries, **DATA_ONLY))
    assert one["datasets"][0]["kept"] == 30 and all(d["kept"] for d in one["datasets"])
    assert_same_rows(one, two)


def test_converter_pickles_without_the_parent_and_converts_the_same(tiny_model_dir, tokenizer, tmp_path):
    cfg_path = write_config(tmp_path, tiny_model_dir, first_chat_rows(tmp_path / "chat.jsonl", 3))
    cfg, manager = load_config(cfg_path)
    strategy = manager.collect_registrations().strategies["chat_template"]
    converter = tokenize.RowConverter(strategy, cfg.datasets[0], cfg, tokenizer)
    # Not registered for forked workers: the pickle carries everything needed to rebuild it.
    copy = pickle.loads(pickle.dumps(converter))
    assert copy.to_features is not converter.to_features
    assert type(copy.cfg) is type(cfg) and copy.cfg == cfg  # plugin keys included
    rows = [json.loads(line) for line in (tmp_path / "chat.jsonl").read_text().splitlines()]
    batch = {"messages": [row["messages"] for row in rows]}
    assert copy(batch, [0, 1, 2]) == converter(batch, [0, 1, 2])


# Unpickles a converter in a fresh interpreter, as a spawned worker does, and prints what it makes.
FRESH_WORKER = """
import json, pickle, sys
converter = pickle.loads(sys.stdin.buffer.read())
table = converter({"question": ["Capital of Peru?"], "answer": ["Lima."]}, [0])
print(json.dumps({"ids": table["input_ids"].to_pylist(), "log_every": converter.cfg.section("example").log_every}))
"""


@pytest.mark.skipif(not _example_plugin_installed(), reason="ftk-example-plugin is not installed")
def test_a_fresh_process_rebuilds_a_plugin_strategy_and_the_plugin_config(
    tiny_model_dir, tokenizer, tmp_path
):
    """What a spawned worker gets: the entry-point plugin's strategy and config section, found again."""
    entry = {"path": QA_DATA, "type": "qa_pairs"}
    cfg, manager = load_config(
        write_config(tmp_path, tiny_model_dir, [entry], extra="example:\n  log_every: 7\n")
    )
    strategy = manager.collect_registrations().strategies["qa_pairs"]
    converter = tokenize.RowConverter(strategy, cfg.datasets[0], cfg, tokenizer)
    expected = converter({"question": ["Capital of Peru?"], "answer": ["Lima."]}, [0])[
        "input_ids"
    ].to_pylist()
    done = subprocess.run(
        [sys.executable, "-c", FRESH_WORKER],
        input=pickle.dumps(converter),
        capture_output=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout) == {"ids": expected, "log_every": 7}


def test_a_bad_row_in_a_worker_exits_2_naming_the_row(tmp_path, tiny_model_dir, capsys):
    rows = [
        json.loads(line) for line in first_chat_rows(tmp_path / "chat.jsonl", 20).read_text().splitlines()
    ]
    rows[15]["messages"][1]["role"] = "robot"
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (cfg,) = _configs(tmp_path, tiny_model_dir, data, counts=(2,))
    assert main(["preprocess", str(cfg)]) == 2
    err = capsys.readouterr().err
    # The file and the row (its line, in a JSON-lines file), the field and the problem; no traceback.
    assert re.search(rf"{re.escape(str(data))}(:16| row 16): messages\[1\]\.role: .*'robot'", err), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    prepared = tmp_path / "prepared-2"
    assert not prepared.exists(), "nothing cached, no staging folder and no empty cache folder left"


def test_processes_by_default_grow_with_the_source_bytes_up_to_every_core():
    cfg = make_config()
    cores = len(os.sched_getaffinity(0))
    assert tokenizing_processes(cfg, BYTES_PER_PROCESS) is None
    assert tokenizing_processes(cfg, 1000 * BYTES_PER_PROCESS) == (cores if cores > 1 else None)
    assert tokenizing_processes(cfg, 2 * BYTES_PER_PROCESS) == (2 if cores > 1 else None)
    assert tokenizing_processes(make_config(dataset_processes=2), 10) == 2
    assert tokenizing_processes(make_config(dataset_processes=1), 10**12) is None


def test_packing_reads_lengths_as_one_array(tmp_path):
    """A ``datasets`` Column of lengths is read in one piece; the bins are the same as from a list."""
    lengths = np.random.default_rng(0).integers(1, 300, 5000)
    data = datasets.Dataset.from_dict({"length": lengths}).shuffle(seed=1)
    column = data["length"]
    expected = [int(n) for n in column_array(data, "length")]
    assert expected == list(column)
    from_column = PackedBatchSampler(column, 512, micro_batch_size=2, seed=3)
    from_list = PackedBatchSampler(expected, 512, micro_batch_size=2, seed=3)
    assert list(from_column) == list(from_list)
    assert len(bin_shapes(expected, 512)) == from_column.num_bins


@pytest.mark.slow
def test_100k_rows_preprocess_with_one_and_two_processes(tmp_path, tiny_model_dir, capsys):
    data = write_short_chats(tmp_path / "short.jsonl", 100_000)
    one, two = (
        preprocess(cfg, capsys)
        for cfg in _configs(tmp_path, tiny_model_dir, data, sequence_len=40, **DATA_ONLY)
    )
    stats = one["datasets"][0]
    assert stats["rows"] == 100_000 and stats["kept"] > 90_000 and stats["too_long"] > 0
    assert_same_rows(one, two)


@pytest.mark.slow
def test_100k_rows_train_with_two_processes(tmp_path, tiny_model_dir, capsys):
    data = write_short_chats(tmp_path / "short.jsonl", 100_000)
    (cfg,) = _configs(
        tmp_path,
        tiny_model_dir,
        data,
        counts=(2,),
        sequence_len=64,
        sample_packing=True,
        micro_batch_size=2,
        max_steps=2,
        **SMALL_LORA,
    )
    assert main(["train", str(cfg)]) == 0
    out = tmp_path / "out"
    meta = json.loads(next((tmp_path / "prepared-2").glob("*/ftk_meta.json")).read_text())
    assert meta["datasets"][0]["rows"] == 100_000 and meta["packing"]["rows"] == meta["train_rows"]
    assert (out / "adapter_model.safetensors").is_file()
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([entry for entry in losses if "loss" in entry]) == 2
