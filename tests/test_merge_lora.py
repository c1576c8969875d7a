"""``ftk merge-lora``: merged weights give the adapter's logits; DoRA and full fine-tuning runs save what they promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftk.cli import main
from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from tests.helpers import token_mean_loss, write_alpaca_config

NEW_TOKEN_ID = 151_646  # the first id after the tiny model's 151,646 tokens
PROMPT = torch.tensor([[151644, 872, 198, 13048, NEW_TOKEN_ID, 151645, 198, 151644, 77091, 198]])


def train(directory: Path, model_dir: Path, **keys):
    cfg, manager = load_config(write_alpaca_config(directory, model_dir, seed=5, **keys))
    return run_training(cfg, manager)


def logits(model, ids: torch.Tensor = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def load_merged(path: Path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    """A 3-step LoRA run that also adds a token (trained through its embedding row)."""
    directory = tmp_path_factory.mktemp("lora-run")
    result = train(directory, tiny_model_dir, adapter="lora", lora_target_linear=True, tokens=["<|new_a|>"])
    return directory, result


@pytest.mark.slow
def test_merged_lora_model_gives_the_adapter_logits(lora_run, tiny_model_dir):
    directory, result = lora_run
    assert main(["merge-lora", str(directory / "cfg.yaml")]) == 0
    merged_dir = directory / "out" / "merged"
    assert (merged_dir / "model.safetensors").is_file()
    assert not list(merged_dir.glob("adapter_*")) and not list(directory.joinpath("out").glob(".merged.*"))

    merged = load_merged(merged_dir)
    assert type(merged).__name__ == "Qwen3ForCausalLM"  # a plain model, no peft wrapper needed
    assert AutoTokenizer.from_pretrained(merged_dir).convert_tokens_to_ids("<|new_a|>") == NEW_TOKEN_ID
    expected = logits(result.model)
    assert torch.allclose(logits(merged), expected, atol=1e-5)
    assert not torch.allclose(logits(load_merged(tiny_model_dir)), expected, atol=1e-3)


@pytest.mark.slow
def test_merge_refuses_to_overwrite_unless_forced(lora_run, tmp_path, capsys):
    directory, result = lora_run
    cfg = str(directory / "cfg.yaml")
    output = tmp_path / "elsewhere"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    assert main(["merge-lora", cfg, "--output", str(output)]) == 2
    assert f"error: --output: {output} is not empty (pass --force to replace it)" in capsys.readouterr().err
    assert main(["merge-lora", cfg, "--output", str(output), "--force"]) == 2  # not a model: never deleted
    assert (output / "notes.txt").read_text() == "mine"

    (output / "notes.txt").unlink()
    assert main(["merge-lora", cfg, "--adapter", str(directory / "out"), "--output", str(output)]) == 0
    assert main(["merge-lora", cfg, "--output", str(output), "--force"]) == 0  # a model dir: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]  # no staging left behind
    assert torch.allclose(logits(load_merged(output)), logits(result.model), atol=1e-5)


def test_merge_without_an_adapter_is_a_clean_error(tmp_path, tiny_model_dir, capsys):
    cfg = write_alpaca_config(tmp_path, tiny_model_dir, seed=5, adapter="lora")
    (tmp_path / "out").mkdir()
    assert main(["merge-lora", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --adapter: {tmp_path / 'out'} has no adapter_config.json")
    assert "Traceback" not in err and not (tmp_path / "out" / "merged").exists()


@pytest.mark.slow
def test_dora_run_trains_saves_use_dora_and_merges_exactly(tiny_model_dir, tmp_path):
    result = train(tmp_path, tiny_model_dir, adapter="lora", lora_target_linear=True, peft_use_dora=True)
    out = tmp_path / "out"
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True

    # Training lowered the loss on its own data: the adapter on vs off, same rows.
    batch = padded_batch(result.data.train.select(range(4)))
    model = result.model.eval()
    with torch.no_grad():
        trained = token_mean_loss(model, batch, None)
        with model.disable_adapter():
            untrained = token_mean_loss(model, batch, None)
    assert trained < untrained - 0.05, (trained, untrained)

    merged_dir = tmp_path / "merged"
    assert main(["merge-lora", str(tmp_path / "cfg.yaml"), "--output", str(merged_dir)]) == 0
    expected = logits(model)
    assert torch.allclose(logits(load_merged(merged_dir)), expected, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert torch.allclose(logits(PeftModel.from_pretrained(base, out)), expected, atol=1e-5)


def padded_batch(rows) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids in rows["input_ids"])
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(zip(rows["input_ids"], rows["labels"], strict=True)):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.slow
def test_full_fine_tuning_saves_a_loadable_model_that_differs_from_the_base(tiny_model_dir, tmp_path):
    train(tmp_path, tiny_model_dir, learning_rate=1.0e-3)
    out = tmp_path / "out"
    assert not (out / "adapter_config.json").exists()
    saved = load_file(out / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    assert saved.keys() == base.keys()
    changed = [name for name in base if not torch.equal(saved[name], base[name])]
    assert len(changed) == len(base)  # every tensor was trained, embeddings and norms included

    model = load_merged(out)
    assert torch.equal(
        model.model.layers[0].self_attn.q_proj.weight, saved["model.layers.0.self_attn.q_proj.weight"]
    )
    assert not torch.allclose(logits(model), logits(load_merged(tiny_model_dir)), atol=1e-4)
