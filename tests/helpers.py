"""Small builders shared by the tests: a slice of the bundled chat data, a short training config."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from transformers import Gemma2Config, Gemma2ForCausalLM, GraniteConfig, GraniteForCausalLM

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


def first_chat_rows(path: Path, rows: int) -> Path:
    """Write the first ``rows`` conversations of the bundled chat data to ``path``; returns it."""
    with CHAT.open() as source:
        path.write_text("".join(islice(source, rows)))
    return path


def write_alpaca_config(directory: Path, model_dir: Path, **keys) -> Path:
    """``directory/cfg.yaml``: 3 constant-rate steps on 16 arithmetic rows; ``keys`` add or override."""
    settings = {
        "base_model": model_dir,
        "datasets": f"[{{path: {ARITHMETIC}, type: alpaca, max_samples: 16}}]",
        "sequence_len": 128,
        "micro_batch_size": 4,
        "max_steps": 3,
        "learning_rate": "1.0e-2",
        "lr_scheduler": "constant",
        "seed": 3,
        "output_dir": directory / "out",
        "dataset_prepared_path": directory / "prepared",
        **keys,
    }
    path = directory / "cfg.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))
    return path
