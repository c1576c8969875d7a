"""The example configs stay valid, and the mixed example prepares both formats correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ftk.cli import main
from ftk.core.config.loader import load_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg, _ = load_config(path)
    for dataset in cfg.datasets:
        assert (REPO / dataset.path).is_file(), dataset.path


def test_mixed_example_prepares_chat_and_alpaca(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    overrides = ["--base_model", str(tiny_model_dir), "--dataset_prepared_path", str(tmp_path)]
    assert main(["preprocess", "examples/mixed.yaml", "--json", *overrides]) == 0
    report = json.loads(capsys.readouterr().out)
    chat, alpaca = report["datasets"]
    assert (chat["rows"], alpaca["rows"], alpaca["kept"]) == (200, 40, 40)
    assert report["train_rows"] + report["eval_rows"] == chat["kept"] + alpaca["kept"]

    import datasets

    train = datasets.load_from_disk(str(Path(report["cache_dir"]) / "train"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    kinds = set()
    for ids, labels in zip(train["input_ids"], train["labels"], strict=True):
        trained = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
        if (
            ids[0] == 151644
        ):  # <|im_start|>: a chat row; trained text ends each assistant turn with <|im_end|>
            kinds.add("chat")
            assert trained.endswith("<|im_end|>") and "<|im_start|>" not in trained
        else:  # an alpaca row: only the response and the eos are trained
            kinds.add("alpaca")
            assert "### Response:" in tokenizer.decode(ids) and "###" not in trained
            assert trained.endswith("<|im_end|>")
    assert kinds == {"chat", "alpaca"}
