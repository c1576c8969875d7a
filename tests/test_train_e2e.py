"""End to end: a short LoRA run trains, writes what it promises, and the adapter reloads exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftk.cli import main
from ftk.commands.train import RESOLVED_CONFIG_NAME, run_training
from ftk.core.config.loader import load_config
from tests.helpers import first_chat_rows, write_config


@pytest.fixture(scope="module")
def small_chat(tmp_path_factory) -> Path:
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 48)


# An 8-step LoRA run of 4-row steps (2 x 2), evaluated every 4 steps on 4 held-out rows.
BASE = dict(
    adapter="lora",
    lora_r=8,
    lora_alpha=16,
    lora_target_linear=True,
    sequence_len=384,
    gradient_accumulation_steps=2,
    max_steps=8,
    learning_rate=5.0e-3,
    lr_scheduler="constant",
    val_set_size=4,
    eval_steps=4,
    seed=7,
)


@pytest.mark.slow
def test_lora_run_trains_saves_and_reloads(tmp_path, tiny_model_dir, small_chat):
    cfg, manager = load_config(write_config(tmp_path, tiny_model_dir, small_chat, **BASE))
    result = run_training(cfg, manager)
    out = tmp_path / "out"

    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_logs = [e for e in entries if "loss" in e]
    assert [e["step"] for e in train_logs] == list(range(1, 9))
    for entry in train_logs:
        assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_second"} <= entry.keys()
        assert entry["tokens_per_second"] > 0
    assert [e["step"] for e in entries if "eval_loss" in e] == [4, 8]
    first, last = train_logs[0]["loss"], train_logs[-1]["loss"]
    assert last < first - 0.05, (first, last)
    assert result.global_step == 8

    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", RESOLVED_CONFIG_NAME):
        assert (out / name).is_file(), name
    resolved, _ = load_config(out / RESOLVED_CONFIG_NAME)
    assert resolved.learning_rate == 5e-3 and resolved.datasets[0].field_messages == "messages"
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|im_end|>") == 151645

    ids = torch.tensor([[151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198]])
    trained = result.model.eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        actual = reloaded(input_ids=ids).logits
    assert torch.allclose(actual, expected, atol=1e-5)
    # The adapter matters: without it the logits are those of the base model, not the trained ones.
    with torch.no_grad(), reloaded.disable_adapter():
        assert not torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-3)


@pytest.mark.slow
def test_cli_preprocess_then_train_reuses_the_cache(tmp_path, tiny_model_dir, small_chat, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, small_chat, **BASE)
    overrides = ["--max_steps", "2", "--val_set_size", "0"]
    assert main(["preprocess", str(cfg), *overrides]) == 0
    assert "cache written" in capsys.readouterr().out
    assert main(["train", str(cfg), *overrides]) == 0
    assert "reusing cached data in" in capsys.readouterr().err
    entries = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert max(e["step"] for e in entries) == 2
