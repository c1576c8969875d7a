"""Built-in plugin: tokenizers and causal LMs through transformers' Auto classes (Hub names or local folders).

Both hooks are ``trylast``: a plugin that loads models its own way answers first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


def _load_error(what: str, name: str, exc: Exception) -> FtkError:
    return FtkError(f"base_model: cannot load the {what} from {name!r}: {type(exc).__name__}: {exc}")


def model_dtype(cfg: FtkConfig) -> torch.dtype:
    """The dtype the base weights are loaded in: bf16/fp16 when asked for, else float32."""
    import torch

    if cfg.bf16:
        return torch.bfloat16
    if cfg.fp16:
        return torch.float16
    return torch.float32


@hookimpl(trylast=True)
def load_tokenizer(cfg: FtkConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of ``tokenizer_config`` (or ``base_model``)."""
    from transformers import AutoTokenizer

    name = cfg.tokenizer_config or cfg.base_model
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error("tokenizer", name, exc) from exc


@hookimpl(trylast=True)
def load_model(cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase, load_kwargs: dict[str, Any]) -> Any:
    """``base_model`` with AutoModelForCausalLM; ``load_kwargs`` (e.g. a ``quantization_config``) go to ``from_pretrained``."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": model_dtype(cfg), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    kwargs.update(load_kwargs)
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error("model", cfg.base_model, exc) from exc
    if model.generation_config is not None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model
