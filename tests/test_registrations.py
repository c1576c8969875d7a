"""Named choices are registrations: a plugin outside ftk adds an optimizer, a schedule, an adapter
kind and a tracker, and a config selects each by name; full fine-tuning needs no adapter plugin.

The training runs use the small-vocabulary tiny model (``small_vocab_model_dir``): nothing checked
here depends on the vocabulary, and each run is faster on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ftk.cli import main
from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from ftk.core.errors import FtkError
from tests.fixture_plugins import registrations
from tests.helpers import first_chat_rows, write_config

PLUGIN = "tests.fixture_plugins.registrations"


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 8)


def logged(output_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    lines = (output_dir / name).read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if "loss" in entry]


@pytest.mark.slow
def test_a_third_party_plugin_adds_each_named_choice(tmp_path, small_vocab_model_dir, chats):
    path = write_config(
        tmp_path,
        small_vocab_model_dir,
        chats,
        plugins=[PLUGIN],
        optimizer="plain_sgd",
        lr_scheduler="halving",
        adapter="norms_only",
        report_to=["jsonl"],
        learning_rate=0.05,
        max_steps=4,
    )
    cfg, manager = load_config(path)
    result = run_training(cfg, manager)
    out = tmp_path / "out"

    # The optimizer and the schedule are the plugin's: SGD without momentum, halved every 2 steps.
    report = json.loads((out / registrations.REPORT_FILE).read_text())
    assert report == {"optimizer": "SGD", "momentum": 0.0, "scheduler": "StepLR"}
    logs = logged(out)
    assert [entry["learning_rate"] for entry in logs] == [0.05, 0.05, 0.025, 0.025]
    # The tracker received every training log entry the metrics file has.
    tracked = logged(out, registrations.TRACKER_FILE)
    assert [(e["step"], e["loss"]) for e in tracked] == [(e["step"], e["loss"]) for e in logs]
    # The adapter kind trained the norm weights only; the full model was saved (no peft adapter).
    assert result.global_step == 4 and not (out / "adapter_config.json").exists()
    base, trained = (
        load_file(small_vocab_model_dir / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    norms = {name for name in base if "norm" in name}
    assert changed == norms and norms


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("optimizer", "plain_sdg", "optimizer: unknown optimizer 'plain_sdg' (did you mean 'plain_sgd'?)"),
        ("lr_scheduler", "halfing", "lr_scheduler: unknown lr_scheduler 'halfing' (did you mean 'halving'?)"),
        ("adapter", "norm_only", "adapter: unknown adapter 'norm_only' (did you mean 'norms_only'?)"),
        (
            "report_to",
            ["tensorboard", "jsnl"],
            "report_to[1]: unknown tracker 'jsnl' (did you mean 'jsonl'?)",
        ),
    ],
)
def test_a_misspelt_name_is_a_config_error_with_a_hint(tmp_path, key, value, expected):
    path = write_config(tmp_path, "some/model", "data.jsonl", plugins=[PLUGIN], **{key: value})
    with pytest.raises(FtkError) as caught:
        load_config(path)
    (line,) = str(caught.value).splitlines()
    assert line.startswith(f"{path}:") and expected in line
    assert "registered: " in line


@pytest.mark.slow
def test_full_fine_tuning_needs_no_adapter_plugin(
    tmp_path, small_vocab_model_dir, chats, monkeypatch, capsys
):
    monkeypatch.setenv("FTK_DISABLE_PLUGINS", "lora")
    path = write_config(tmp_path, small_vocab_model_dir, chats, max_steps=2, learning_rate=1.0e-4)
    assert main(["train", str(path)]) == 0
    out = tmp_path / "out"
    assert len(logged(out)) == 2 and (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    # Without the plugin, adapter: lora names nothing registered, and its keys are unknown.
    capsys.readouterr()
    for keys, expected in (
        ({"adapter": "lora"}, "adapter: unknown adapter 'lora'; registered: none (no plugin registers one)"),
        ({"lora_r": 4}, "lora_r: unknown key"),
    ):
        assert main(["validate", str(write_config(tmp_path, small_vocab_model_dir, chats, **keys))]) == 2
        assert expected in capsys.readouterr().err
