"""Load tokenizers and causal LMs with transformers' Auto classes (Hub names or local directories).

Tokens that the config adds (``tokens:``, and ``special_tokens`` not yet in the vocabulary) get
new ids at the end of the vocabulary.  Their embedding rows were never trained, so an adapter must
train them: the tokenizer and the model both carry the new ids (:func:`added_token_ids`), which
the ``lora`` plugin reads to train exactly those rows.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.hookspecs import hookimpl
from ftk.plugins.loss import has_router, router_aux_loss_coef

#: Attribute set on the tokenizer (by ``load_tokenizer``) and on the model (by ``load_model``):
#: the ids, in order, of the tokens this run added to the base vocabulary.
ADDED_TOKEN_IDS_ATTR = "ftk_added_token_ids"

#: Embedding rows are allocated in multiples of this (tensor-core friendly shapes).
EMBEDDING_MULTIPLE = 64


def added_token_ids(obj: Any) -> tuple[int, ...]:
    """The ids of the tokens ftk added to the base vocabulary, recorded on a tokenizer or model.

    Empty when nothing was added, or when the tokenizer or model came from a plugin that does not
    record them.
    """
    return tuple(getattr(obj, ADDED_TOKEN_IDS_ATTR, ()))


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
    base_length = len(tokenizer)
    if cfg.special_tokens is not None:
        overrides = {k: v for k, v in cfg.special_tokens.model_dump().items() if v is not None}
        tokenizer.add_special_tokens(overrides)
    if cfg.tokens:
        tokenizer.add_tokens(list(cfg.tokens))
    # Tokens already in the vocabulary are not added again, so the new ones are exactly these.
    setattr(tokenizer, ADDED_TOKEN_IDS_ATTR, tuple(range(base_length, len(tokenizer))))
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


def resize_embeddings(model: Any, vocab_size: int, seed: int) -> None:
    """Grow the embeddings (and a tied or untied output head) to hold ``vocab_size`` tokens.

    New rows are drawn around the mean of the existing ones (transformers' default), from a
    generator seeded with ``seed``: the same config gives the same base model every time it is
    loaded, so an adapter trained on it reloads onto an identical base (``ftk merge-lora``).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.resize_token_embeddings(vocab_size, pad_to_multiple_of=EMBEDDING_MULTIPLE)


def enable_router_loss(cfg: FtkConfig, model: Any) -> None:
    """Make a mixture-of-experts model return its router load-balancing loss (``aux_loss``).

    Models without a router are left alone; asking for a router loss on one is a config error.
    """
    config = model.config
    if not has_router(config):
        if cfg.router_aux_loss_coef:
            raise FtkError(
                f"router_aux_loss_coef: {config.model_type!r} models have no router "
                "(not a mixture of experts); remove the key"
            )
        return
    if router_aux_loss_coef(cfg, config) > 0:
        config.output_router_logits = True


@hookimpl
def load_model(cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase, load_kwargs: dict[str, Any]) -> Any:
    """Load ``base_model`` with AutoModelForCausalLM and grow its embeddings for added tokens.

    ``load_kwargs`` (e.g. a quantization plugin's ``quantization_config``) go to ``from_pretrained``.
    """
    kwargs: dict[str, Any] = {"dtype": model_dtype(cfg), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    kwargs.update(load_kwargs)
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.base_model, **kwargs)
    except (OSError, ValueError) as exc:
        raise _hub_error("model", cfg.base_model, exc) from exc
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        resize_embeddings(model, len(tokenizer), cfg.seed)
    setattr(model, ADDED_TOKEN_IDS_ATTR, added_token_ids(tokenizer))
    enable_router_loss(cfg, model)
    if model.generation_config is not None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model
