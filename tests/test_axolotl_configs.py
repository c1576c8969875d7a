"""Configs written with axolotl's documented key names validate and preprocess with ftk unchanged.

They cover the common shapes of an axolotl config: chat_template with LoRA and packing, alpaca with
QLoRA, raw-text completion, and a full fine-tune; paths point at the bundled data and the tiny model
(its small-vocabulary version: no count checked here depends on the vocabulary).
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest

from ftk.cli import main
from tests.helpers import first_chat_rows

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO / "examples" / "data" / "arithmetic_alpaca.jsonl"

CONFIGS = {
    "chat_template-lora-packing": """\
base_model: {model}
datasets:
  - path: {chat}
    type: chat_template
    field_messages: messages
    message_property_mappings:
      role: role
      content: content
    roles_to_train: [assistant]
    train_on_eos: turn
chat_template: tokenizer_default
adapter: lora
lora_r: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target_linear: true
sequence_len: 1024
sample_packing: true
eval_sample_packing: false
micro_batch_size: 2
gradient_accumulation_steps: 4
num_epochs: 1
learning_rate: 0.0002
lr_scheduler: cosine
warmup_ratio: 0.1
optimizer: adamw_torch
weight_decay: 0.0
gradient_checkpointing: true
val_set_size: 0.05
eval_steps: 50
save_steps: 100
logging_steps: 1
seed: 42
output_dir: {out}
dataset_prepared_path: {prepared}
""",
    "alpaca-qlora": """\
base_model: {model}
load_in_4bit: true
adapter: qlora
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules: [q_proj, k_proj, v_proj, o_proj]
datasets:
  - path: {alpaca}
    type: alpaca
sequence_len: 512
sample_packing: false
micro_batch_size: 4
gradient_accumulation_steps: 2
num_epochs: 3
learning_rate: 0.0002
lr_scheduler: linear
warmup_steps: 10
optimizer: adamw_bnb_8bit
train_on_inputs: false
val_set_size: 0.1
output_dir: {out}
dataset_prepared_path: {prepared}
""",
    "completion": """\
base_model: {model}
datasets:
  - path: {text}
    type: completion
    field: text
adapter: lora
lora_r: 8
lora_alpha: 16
lora_target_linear: true
sequence_len: 256
sample_packing: true
micro_batch_size: 1
num_epochs: 1
learning_rate: 0.0001
output_dir: {out}
dataset_prepared_path: {prepared}
""",
    "full-fine-tune": """\
base_model: {model}
datasets:
  - path: {chat}
    type: chat_template
sequence_len: 1024
micro_batch_size: 1
gradient_accumulation_steps: 8
num_epochs: 1
learning_rate: 0.00001
lr_scheduler: cosine
special_tokens:
  pad_token: "<|endoftext|>"
output_dir: {out}
dataset_prepared_path: {prepared}
""",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("axolotl-data")
    chat = first_chat_rows(folder / "chat.jsonl", 40)
    alpaca = folder / "alpaca.jsonl"
    with ALPACA.open() as source:
        alpaca.write_text("".join(islice(source, 40)))
    text = folder / "text.jsonl"
    text.write_text(
        "".join(json.dumps({"text": f"Document {i}: " + "numbers " * (i + 3)}) + "\n" for i in range(12))
    )
    return {"chat": chat, "alpaca": alpaca, "text": text}


def write(tmp_path: Path, name: str, model: Path, data: dict[str, Path]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        CONFIGS[name].format(
            model=model,
            out=tmp_path / "out",
            prepared=tmp_path / "prepared",
            **{k: v for k, v in data.items()},
        )
    )
    return path


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_axolotl_style_config_validates_and_preprocesses(tmp_path, small_vocab_model_dir, data, name, capsys):
    path = write(tmp_path, name, small_vocab_model_dir, data)
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["preprocess", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["train_rows"] > 0
    assert 0 < summary["trained_tokens"] <= summary["tokens"]
    if name == "completion":
        assert (
            summary["trained_tokens"] == summary["tokens"] - summary["train_rows"]
        )  # all but each first token
    if name == "alpaca-qlora":
        assert summary["eval_rows"] == 4  # val_set_size 0.1 of 40 rows
