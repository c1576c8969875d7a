"""Tokenizer, base model and adapter: each from its hook or registry, and what the core adds between.

The core adds the config's ``tokens`` and ``special_tokens`` to whatever tokenizer a plugin
loaded, grows the model's embeddings to match (seeded, so the same config always builds the same
base), turns on the router loss of mixture-of-experts models, and hands the ids of the new tokens
to the adapter, which must train their rows.  ``adapter`` unset is full fine-tuning: the model as
loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftk.core.errors import FtkError, say
from ftk.core.lm import has_router, router_aux_loss_coef

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ftk.core.config.schema import FtkConfig
    from ftk.core.hooks import Hooks
    from ftk.core.registry import Registry

#: Embedding rows are allocated in multiples of this (tensor-core friendly shapes).
EMBEDDING_MULTIPLE = 64
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def load_tokenizer(cfg: FtkConfig, hooks: Hooks) -> tuple[PreTrainedTokenizerBase, tuple[int, ...]]:
    """The tokenizer (from the first plugin that loads one) with the config's tokens added.

    Returns it with the ids of the tokens this run added to its vocabulary, in order.  A
    tokenizer without a pad token pads with its eos token (padding is masked out anyway).
    """
    tokenizer = hooks.load_tokenizer(cfg)
    if tokenizer is None:
        raise FtkError(f"base_model: no plugin could load a tokenizer for {cfg.base_model!r}")
    base_length = len(tokenizer)
    if cfg.special_tokens is not None:
        tokenizer.add_special_tokens(cfg.special_tokens.model_dump(exclude_none=True))
    if cfg.tokens:
        tokenizer.add_tokens(list(cfg.tokens))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Tokens already in the vocabulary are not added again, so the new ones are exactly these.
    return tokenizer, tuple(range(base_length, len(tokenizer)))


def load_base_model(cfg: FtkConfig, hooks: Hooks, tokenizer: PreTrainedTokenizerBase, purpose: str) -> Any:
    """The base model, before any adapter: pre_model_load, load_model, then the core's additions, post_model_load."""
    say(f"model: loading {cfg.base_model}")  # a log shows what the next seconds (or minutes) are spent on
    hooks.pre_model_load(cfg, purpose)
    model = hooks.load_model(cfg, tokenizer, hooks.model_load_kwargs(cfg, purpose))
    if model is None:
        raise FtkError(f"base_model: no plugin could load the model {cfg.base_model!r}")
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        import torch

        with torch.random.fork_rng(devices=[]):  # new rows drawn the same way every time
            torch.manual_seed(cfg.seed)
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=EMBEDDING_MULTIPLE)
    enable_router_loss(cfg, model)
    hooks.post_model_load(cfg, model, tokenizer, purpose)
    return model


def enable_router_loss(cfg: FtkConfig, model: Any) -> None:
    """Make a mixture-of-experts model return its router load-balancing loss (``aux_loss``)."""
    config = model.config
    if not has_router(config):
        if cfg.router_aux_loss_coef:
            raise FtkError(
                f"router_aux_loss_coef: {config.model_type!r} models have no router "
                "(not a mixture of experts); remove the key"
            )
        return
    if router_aux_loss_coef(cfg.router_aux_loss_coef, config) > 0:
        config.output_router_logits = True


def load_model(
    cfg: FtkConfig,
    hooks: Hooks,
    registry: Registry,
    tokenizer: PreTrainedTokenizerBase,
    new_token_ids: tuple[int, ...],
) -> Any:
    """The model to train: the base model with the adapter ``cfg.adapter`` names (none: all of it)."""
    model = load_base_model(cfg, hooks, tokenizer, "train")
    if cfg.adapter is None:
        return model
    return registry.lookup("adapters", cfg.adapter).apply(cfg, model, new_token_ids)


def load_inference_tokenizer(cfg: FtkConfig, hooks: Hooks, directory: Path | None) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``directory`` when there is one (with the tokens added in training), else the config's."""
    if directory is not None and any((directory / name).is_file() for name in TOKENIZER_FILES):
        cfg = cfg.model_copy(update={"tokenizer_config": str(directory)})
    return load_tokenizer(cfg, hooks)[0]
