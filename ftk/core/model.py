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


def model_load_kwargs(cfg: FtkConfig, hooks: Any) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments plugins contribute; a clash between two is an error."""
    merged: dict[str, Any] = {}
    for contribution in hooks.model_load_kwargs(cfg=cfg):
        for key, value in (contribution or {}).items():
            if key in merged and merged[key] != value:
                raise FtkError(f"plugins disagree on the model loading argument {key!r}")
            merged[key] = value
    return merged


def load_base_model(cfg: FtkConfig, hooks: Any, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The base model, before any adapter: pre_model_load, load_model (with plugins' kwargs), post_model_load."""
    hooks.pre_model_load(cfg=cfg)
    model = hooks.load_model(cfg=cfg, tokenizer=tokenizer, load_kwargs=model_load_kwargs(cfg, hooks))
    if model is None:
        raise FtkError(f"base_model: no plugin could load the model {cfg.base_model!r}")
    hooks.post_model_load(cfg=cfg, model=model, tokenizer=tokenizer)
    return model


def load_model(cfg: FtkConfig, hooks: Any, tokenizer: PreTrainedTokenizerBase) -> Any:
    """Base model with the configured adapter applied, via the model-loading and adapter hooks."""
    model = load_base_model(cfg, hooks, tokenizer)
    adapted = hooks.apply_adapter(cfg=cfg, model=model)
    if adapted is None:
        raise FtkError(f"adapter: no plugin applies the adapter {cfg.adapter!r}")
    return adapted
