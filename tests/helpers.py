"""Small builders shared by the tests: a slice of the bundled chat data, a short training config."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from ftk.core.config.loader import config_from_data
from ftk.core.config.schema import FtkConfig
from ftk.core.plugins import FtkPluginManager, create_plugin_manager

REPO = Path(__file__).resolve().parents[1]
CHAT = REPO / "examples" / "data" / "sgd_chat_600.jsonl"
ARITHMETIC = REPO / "examples" / "data" / "arithmetic_alpaca.jsonl"

# A few-kilobyte decoder shape for building random models of any family in tests.
SMALL_SHAPE = dict(
    vocab_size=512,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
)

# Families that transform their logits after the head, as (model class, config), by test id:
# Gemma 2 caps them (final_logit_softcapping), Granite divides them (logits_scaling).
LOGIT_TRANSFORM_FAMILIES = {
    "gemma2-softcap": (Gemma2ForCausalLM, Gemma2Config(**SMALL_SHAPE, final_logit_softcapping=2.0)),
    "granite-scaling": (
        GraniteForCausalLM,
        GraniteConfig(**{k: v for k, v in SMALL_SHAPE.items() if k != "head_dim"}, logits_scaling=4.0),
    ),
}


#: A small LoRA on every linear layer with over-long rows cut, the run most tests train.
SMALL_LORA: dict[str, Any] = dict(
    adapter="lora", lora_r=4, lora_alpha=8, lora_target_linear=True, excess_length_strategy="truncate"
)

_MANAGER: list[FtkPluginManager] = []


def builtin_manager() -> FtkPluginManager:
    """One plugin manager with the built-in plugins (and installed ones), shared by the tests."""
    if not _MANAGER:
        _MANAGER.append(create_plugin_manager())
    return _MANAGER[0]


def make_config(**keys: Any) -> FtkConfig:
    """A config validated like a file (plugin keys included); ``base_model`` and ``datasets`` are placeholders."""
    data = {"base_model": "m", "datasets": [{"path": "unused.jsonl"}], **keys}
    data = {key: str(value) if isinstance(value, Path) else value for key, value in data.items()}
    return config_from_data(data, None if data.get("plugins") else builtin_manager())


def token_mean_loss(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: torch.Tensor | int | None = None,
    cfg: FtkConfig | None = None,
    metrics: Any = None,
) -> torch.Tensor:
    """A micro-batch's loss as the trainer trains on it: the loss hooks of the built-in plugins, normalised by the core."""
    from ftk.core.trainer import micro_batch_loss

    cfg = cfg or make_config()
    return micro_batch_loss(cfg, builtin_manager().hooks, model, inputs, num_items_in_batch, metrics)


def reference_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Next-token cross-entropy written out plainly: summed over trained positions, divided by their count."""
    shift_logits = logits[..., :-1, :].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[..., 1:].reshape(-1)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    return total / (num_items_in_batch if num_items_in_batch is not None else shift_labels.ne(-100).sum())


def first_chat_rows(path: Path, rows: int) -> Path:
    """Write the first ``rows`` conversations of the bundled chat data to ``path``; returns it."""
    with CHAT.open() as source:
        path.write_text("".join(islice(source, rows)))
    return path


def write_alpaca_config(directory: Path, model_dir: Path, **keys: Any) -> Path:
    """``directory/cfg.yaml``: 3 constant-rate steps on 16 arithmetic rows; ``keys`` add or override."""
    alpaca = {"sequence_len": 128, "micro_batch_size": 4, "learning_rate": 1.0e-2, "lr_scheduler": "constant"}
    data = [{"path": ARITHMETIC, "type": "alpaca", "max_samples": 16}]
    return write_config(directory, model_dir, data, **{**alpaca, **keys})


def write_config(
    directory: Path,
    model_dir: Path | str,
    data: Path | str | list[dict[str, Any]],
    name: str = "cfg.yaml",
    extra: str = "",
    **keys: Any,
) -> Path:
    """``directory/<name>``: a short run on ``data`` (a chat file, or dataset entries); ``keys`` add or override.

    The defaults: full fine-tuning (no adapter), 3 steps of 2 rows at ``sequence_len`` 512, seed 3,
    output in ``directory/out`` and the data cache in ``directory/prepared``.  A key given as None
    is left out; paths, also inside lists and mappings, are written as text.  ``extra`` is YAML
    text appended as it is (for keys a test writes by hand).
    """
    datasets = data if isinstance(data, list) else [{"path": str(data), "type": "chat_template"}]
    settings: dict[str, Any] = {
        "base_model": str(model_dir),
        "datasets": datasets,
        "sequence_len": 512,
        "micro_batch_size": 2,
        "max_steps": 3,
        "seed": 3,
        "output_dir": str(directory / "out"),
        "dataset_prepared_path": str(directory / "prepared"),
        **keys,
    }
    path = directory / name
    text = yaml.safe_dump(_plain({k: v for k, v in settings.items() if v is not None}), sort_keys=False)
    path.write_text(text + extra)
    return path


def _plain(value: Any) -> Any:
    """``value`` with every Path in it (in lists and mappings too) as text, for YAML."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def line_of(path: Path, key: str) -> int:
    """The 1-based line of the config ``path`` where ``key`` is first set, at any depth."""
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.lstrip(" -").startswith(f"{key}:"))


def tiny_moe(layers: int = 1) -> Qwen3MoeForCausalLM:
    """A Qwen3-MoE of ``layers`` layers of 4 experts (top 2) over a 64-token vocabulary, at random weights."""
    config = Qwen3MoeConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        moe_intermediate_size=8,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
    )
    return Qwen3MoeForCausalLM(config)
