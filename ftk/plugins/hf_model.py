"""Load tokenizers and causal LMs with transformers' Auto classes (Hub names or local directories)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.hookspecs import hookimpl


def _hub_error(what: str, name: str, exc: Exception) -> FtkError:
    return FtkError(f"base_model: cannot load the {what} from {name!r}: {type(exc).__name__}: {exc}")


@hookimpl
def load_tokenizer(cfg: FtkConfig) -> PreTrainedTokenizerBase:
    """Load the tokenizer of ``tokenizer_config`` (or ``base_model``) and apply ``special_tokens``."""
    name = cfg.tokenizer_config or cfg.base_model
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _hub_error("tokenizer", name, exc) from exc
    if cfg.special_tokens is not None:
        overrides = {k: v for k, v in cfg.special_tokens.model_dump().items() if v is not None}
        tokenizer.add_special_tokens(overrides)
    if cfg.tokens:
        tokenizer.add_tokens(list(cfg.tokens))
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and loss, so any existing token will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_dtype(cfg: FtkConfig) -> torch.dtype:
    """The dtype the base weights are loaded in: bf16/fp16 when asked for, else float32."""
    if cfg.bf16:
        return torch.bfloat16
    if cfg.fp16:
        return torch.float16
    return torch.float32


@hookimpl
def load_model(cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase) -> Any:
    """Load ``base_model`` with AutoModelForCausalLM and grow its embeddings for added tokens."""
    kwargs: dict[str, Any] = {"dtype": model_dtype(cfg), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model, **kwargs)
    except (OSError, ValueError) as exc:
        raise _hub_error("model", cfg.base_model, exc) from exc
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    if model.generation_config is not None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model
