"""Tokenizer, model and adapter, each obtained through its hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.registry import merge_contributions


def load_tokenizer(cfg: FtkConfig, hooks: Any) -> PreTrainedTokenizerBase:
    """The tokenizer from the first plugin whose ``load_tokenizer`` answers."""
    tokenizer = hooks.load_tokenizer(cfg=cfg)
    if tokenizer is None:
        raise FtkError(f"base_model: no plugin could load a tokenizer for {cfg.base_model!r}")
    return tokenizer


def model_load_kwargs(cfg: FtkConfig, hooks: Any) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments plugins contribute; a clash between two is an error."""
    return merge_contributions(hooks.model_load_kwargs(cfg=cfg), "model loading argument")


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


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def has_tokenizer(directory: Path) -> bool:
    """Whether ``directory`` holds saved tokenizer files."""
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def load_inference_tokenizer(cfg: FtkConfig, hooks: Any, directory: Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``directory`` when there is one, else the config's; through the hook.

    The saved one carries the tokens and special tokens added in training; the hook still applies
    ``special_tokens`` and ``tokens`` (already present: nothing changes) and the pad fallback.
    """
    if directory is not None and has_tokenizer(directory):
        cfg = cfg.model_copy(update={"tokenizer_config": str(directory)})
    return load_tokenizer(cfg, hooks)
