"""Tokenizer, model and adapter, each obtained through its hook."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError


def load_tokenizer(cfg: FtkConfig, hooks: Any) -> PreTrainedTokenizerBase:
    """The tokenizer from the first plugin whose ``load_tokenizer`` answers."""
    tokenizer = hooks.load_tokenizer(cfg=cfg)
    if tokenizer is None:
        raise FtkError(f"base_model: no plugin could load a tokenizer for {cfg.base_model!r}")
    return tokenizer


def load_model(cfg: FtkConfig, hooks: Any, tokenizer: PreTrainedTokenizerBase) -> Any:
    """Base model with the configured adapter applied, via the model-loading and adapter hooks."""
    hooks.pre_model_load(cfg=cfg)
    model = hooks.load_model(cfg=cfg, tokenizer=tokenizer)
    if model is None:
        raise FtkError(f"base_model: no plugin could load the model {cfg.base_model!r}")
    hooks.post_model_load(cfg=cfg, model=model, tokenizer=tokenizer)
    adapted = hooks.apply_adapter(cfg=cfg, model=model)
    if adapted is None:
        raise FtkError(f"adapter: no plugin applies the adapter {cfg.adapter!r}")
    return adapted
