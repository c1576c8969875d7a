"""A benchmark plugin: a model directory holding only ``config.json`` and a ``RANDOM_WEIGHTS`` marker
is built with random weights instead of loaded.

Throughput does not depend on the weights, so a GPU benchmark can run Qwen3-0.6B or Qwen3-8B
shapes without downloading them (:func:`write_model_dir` writes such a directory; other plugins,
Liger's included, read its ``config.json`` as usual).  The tokenizer comes from
``tokenizer_config`` (the tiny model's Qwen BPE tokenizer has the same ids).  Load the plugin with
``plugins: [bench.random_model_plugin]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config

from ftk.core.hookspecs import hookimpl

MARKER = "RANDOM_WEIGHTS"

#: Published Qwen3 shapes (config.json of each model), enough to rebuild the architecture.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    ),
    "qwen3-8b": dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=False,
    ),
    # Not a published model: a few-MB shape for checking the harness end to end (``--smoke``).
    "smoke": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    ),
}
VOCAB_SIZE = 151_936


def write_model_dir(name: str, directory: Path) -> Path:
    """Write ``config.json`` of the named Qwen3 shape and the random-weights marker; returns the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    Qwen3Config(vocab_size=VOCAB_SIZE, max_position_embeddings=40_960, **SHAPES[name]).save_pretrained(
        directory
    )
    (directory / MARKER).write_text("weights are drawn at random by bench/random_model_plugin.py\n")
    return directory


@hookimpl
def load_model(cfg: Any, tokenizer: Any, load_kwargs: dict[str, Any]) -> Any:
    """Build marked model directories with random weights; leave every other base_model alone."""
    directory = Path(cfg.base_model)
    if not (directory / MARKER).is_file():
        return None
    config = AutoConfig.from_pretrained(directory)
    if cfg.attn_implementation:
        config._attn_implementation = cfg.attn_implementation
    dtype = torch.bfloat16 if cfg.bf16 else torch.float16 if cfg.fp16 else torch.float32
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.use_cache = False
    return model
