"""docs/axolotl.md tells the truth: each row of its example tables is checked against the config loader.

- ``same``: the setting validates as written and the loaded config holds the value;
- ``mapped to `key: value```: the axolotl setting validates and the loaded config holds ``key: value``;
- ``no-op``: the setting validates and leaves nothing in the loaded config;
- ``not supported``: rejected, naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from ftk.core.config.loader import load_config
from ftk.core.errors import FtkError

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "axolotl.md"
SECTIONS = {"### Top-level keys": "top", "### Dataset keys": "dataset"}

# Keys some rows need beside them to form a valid config (added to accepted and rejected cases alike).
COMPANIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("top", "adapter"): {"load_in_4bit": True},  # qlora asks for a 4-bit base; lora accepts one
    ("top", "load_in_4bit"): {"adapter": "qlora"},
    ("top", "load_in_8bit"): {"adapter": "lora"},
    ("top", "lora_modules_to_save"): {"adapter": "lora"},
    ("top", "peft_use_dora"): {"adapter": "lora"},
    ("top", "peft_use_rslora"): {"adapter": "lora"},
    ("top", "load_best_model_at_end"): {"eval_steps": 50, "save_steps": 100},
    ("top", "fsdp_version"): {"fsdp": {}},
    ("top", "gradient_checkpointing_kwargs"): {"gradient_checkpointing": True},
    ("top", "bnb_config_kwargs"): {"adapter": "qlora", "load_in_4bit": True},
    ("top", "gradient_checkpointing"): {"fsdp_config": None},
    ("top", "early_stopping_patience"): {"val_set_size": 0.1, "eval_steps": 10},
    ("top", "lr_scheduler"): {},
    ("dataset", "field_instruction"): {"type": "alpaca"},
    ("dataset", "system_prompt"): {"type": "alpaca"},
}

# The keys this page must keep covering (the common ones of axolotl configs).
REQUIRED_TOP = {
    "base_model", "model_type", "tokenizer_type", "load_in_8bit", "load_in_4bit", "adapter", "lora_r",
    "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_linear", "lora_modules_to_save",
    "peft_use_dora", "peft_use_rslora", "datasets", "chat_template", "sequence_len", "sample_packing",
    "eval_sample_packing", "pad_to_sequence_len", "micro_batch_size", "gradient_accumulation_steps",
    "num_epochs", "max_steps", "learning_rate", "lr_scheduler", "cosine_min_lr_ratio", "warmup_steps",
    "warmup_ratio", "optimizer", "weight_decay", "bf16", "fp16", "tf32", "gradient_checkpointing",
    "flash_attention", "val_set_size", "test_datasets", "eval_steps", "save_steps", "save_total_limit",
    "output_dir", "dataset_prepared_path", "resume_from_checkpoint", "auto_resume_from_checkpoints",
    "wandb_project", "wandb_entity", "wandb_name", "wandb_mode", "use_tensorboard", "deepspeed", "fsdp",
    "fsdp_config", "liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_fused_linear_cross_entropy",
    "chunked_cross_entropy", "special_tokens", "tokens", "train_on_inputs", "seed", "strict", "logging_steps",
}  # fmt: skip
REQUIRED_DATASET = {
    "path",
    "type",
    "field_messages",
    "message_property_mappings",
    "roles_to_train",
    "train_on_eos",
}
#: Settings the loader resolves for the machine it runs on (the value read is true or false).
RESOLVED_PER_MACHINE = {("top", "bf16"), ("top", "tf32")}
REQUIRED_OPTIMIZERS = {"adamw_bnb_8bit", "adamw_torch", "paged_adamw_8bit"}


@dataclass(frozen=True)
class Row:
    """One table row: where the setting goes, the axolotl setting, and what the page says ftk does."""

    where: str
    key: str
    value: Any
    verdict: str
    line: int

    @property
    def id(self) -> str:
        return f"{self.where}:{self.key}={self.value!r}"[:80]


def cells(line: str) -> list[str]:
    """The cells of a markdown table line (``\\|`` is a pipe inside a cell)."""
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [part.strip().replace("\\|", "|") for part in parts]


def setting(code: str) -> tuple[str, Any]:
    """``key: value`` in backticks -> (key, value read as YAML)."""
    data = yaml.safe_load(code.strip("`"))
    assert isinstance(data, dict) and len(data) == 1, code
    return next(iter(data.items()))


def read_rows() -> list[Row]:
    rows: list[Row] = []
    where = None
    for number, line in enumerate(PAGE.read_text().splitlines(), start=1):
        if line.startswith("#"):
            where = next((w for heading, w in SECTIONS.items() if line.startswith(heading)), None)
            continue
        if where is None or not line.startswith("| `"):
            continue
        axolotl, verdict, _notes = cells(line)
        key, value = setting(axolotl)
        rows.append(Row(where, key, value, verdict, number))
    return rows


ROWS = read_rows()


def config_data(where: str, key: str, value: Any, dataset_path: Path) -> dict[str, Any]:
    """A minimal config holding ``key: value`` at the top level or in the (only) dataset entry."""
    dataset: dict[str, Any] = {"path": str(dataset_path), "type": "chat_template"}
    data: dict[str, Any] = {"base_model": "Qwen/Qwen3-0.6B", "datasets": [dataset]}
    companions = COMPANIONS.get((where, key), {})
    if where == "top":
        data.update({**companions, key: value})
    else:
        dataset.update({**companions, key: value})
    return data


def try_load(tmp_path: Path, data: dict[str, Any]):
    """(config, None) when ``data`` validates, else (None, the error text)."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        cfg, _ = load_config(path)
    except FtkError as exc:
        return None, str(exc)
    return cfg, None


def plain(value: Any) -> Any:
    """A loaded config value as plain data (plugin keys are RootModels)."""
    if isinstance(value, BaseModel) and hasattr(value, "root"):
        return value.root
    return value


def assert_accepted(tmp_path: Path, where: str, key: str, value: Any) -> None:
    data_file = tmp_path / "data.jsonl"
    data_file.write_text('{"messages": []}\n')
    cfg, error = try_load(tmp_path, config_data(where, key, value, data_file))
    assert error is None, f"{key}: {value!r} should validate:\n{error}"
    if isinstance(value, dict) or key in ("datasets", "test_datasets"):
        return  # sections are checked by their own plugins' tests; the key was accepted
    if value == "auto" and (where, key) in RESOLVED_PER_MACHINE:
        return
    holder = cfg if where == "top" else cfg.datasets[0]
    assert plain(getattr(holder, key)) == value, key


def assert_mapped(
    tmp_path: Path, where: str, key: str, value: Any, new_key: str | None, new_value: Any
) -> None:
    """``key: value`` validates, is gone from the loaded config, and ``new_key`` holds ``new_value``."""
    data_file = tmp_path / "data.jsonl"
    data_file.write_text('{"messages": []}\n')
    cfg, error = try_load(tmp_path, config_data(where, key, value, data_file))
    assert error is None, f"{key}: {value!r} should validate:\n{error}"
    holder = cfg if where == "top" else cfg.datasets[0]
    if key != new_key and key not in type(holder).model_fields:
        assert key not in holder.model_dump(), key
    if new_key is not None:
        got = plain(getattr(holder, new_key))
        if isinstance(new_value, dict) and isinstance(got, BaseModel):
            got = {name: getattr(got, name) for name in new_value}  # the settings the row names
        assert got == new_value, (key, new_key, got)


def assert_rejected(tmp_path: Path, where: str, key: str, value: Any) -> None:
    data_file = tmp_path / "data.jsonl"
    data_file.write_text('{"messages": []}\n')
    _, error = try_load(tmp_path, config_data(where, key, value, data_file))
    assert error is not None, f"{key}: {value!r} should be rejected"
    named = key if where == "top" else f"datasets[0].{key}"
    values = value if isinstance(value, list) else [value]
    assert named in error or any(str(v) in error for v in values), error


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_row_matches_the_config_loader(row, tmp_path):
    verdict = row.verdict
    if verdict == "same":
        assert_accepted(tmp_path, row.where, row.key, row.value)
    elif verdict.startswith("mapped to `"):
        new_key, new_value = setting(re.fullmatch(r"mapped to (`[^`]+`)", verdict).group(1))
        assert_mapped(tmp_path, row.where, row.key, row.value, new_key, new_value)
    elif verdict == "no-op":
        assert_mapped(tmp_path, row.where, row.key, row.value, None, None)
    elif verdict == "not supported":
        assert_rejected(tmp_path, row.where, row.key, row.value)
    else:
        pytest.fail(f"docs/axolotl.md:{row.line}: unknown verdict {verdict!r}")


def test_page_covers_the_common_axolotl_keys():
    top = {row.key for row in ROWS if row.where == "top"}
    dataset = {row.key for row in ROWS if row.where == "dataset"}
    assert REQUIRED_TOP - top == set()
    assert REQUIRED_DATASET - dataset == set()
    optimizers = {row.value for row in ROWS if row.key == "optimizer"}
    assert REQUIRED_OPTIMIZERS - optimizers == set()


def test_table_parser_reads_escaped_pipes_and_every_verdict():
    assert cells(r"| `eot_tokens: ['<\|im_end\|>']` | same | x |") == [
        "`eot_tokens: ['<|im_end|>']`",
        "same",
        "x",
    ]
    verdicts = {row.verdict.split(" `")[0] for row in ROWS}
    assert verdicts == {"same", "mapped to", "no-op", "not supported"}
