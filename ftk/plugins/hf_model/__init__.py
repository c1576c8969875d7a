"""Built-in plugin: tokenizers and causal LMs through transformers (Hub names or local folders).

The classes are transformers' Auto classes unless the config names others (``model_type``,
``tokenizer_type``); the other loading keys of axolotl (``revision_of_model``, ``model_config``,
``device_map``, ``model_quantization_config``, ``use_kernels``...) are checked when the config is
read and before any data work, and become arguments of ``from_pretrained`` (``settings.py``).
``load_tokenizer`` and ``load_model`` are ``trylast``: a plugin that loads models its own way
answers first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError, say, suggest
from ftk.core.hookspecs import hookimpl
from ftk.plugins.hf_model import checks, names
from ftk.plugins.hf_model.checks import setting
from ftk.plugins.hf_model.settings import SECTION, ModelLoadingSettings

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from ftk.core.registry import Register

#: ``resize_token_embeddings_to_32x`` grows the embeddings to a multiple of this.
RESIZE_MULTIPLE = 32
#: What loading raises for a bad checkpoint, revision, class or quantization.
LOAD_ERRORS = (OSError, ValueError, TypeError, ImportError, RuntimeError, KeyError)


def _load_error(what: str, name: str, exc: Exception) -> FtkError:
    return FtkError(f"base_model: cannot load the {what} from {name!r}: {type(exc).__name__}: {exc}")


def model_dtype(cfg: FtkConfig) -> torch.dtype:
    """The dtype the base weights are loaded in: bf16/bfloat16 or fp16/float16 when asked for, else float32."""
    import torch

    if cfg.bf16 or setting(cfg, "bfloat16"):
        return torch.bfloat16
    if cfg.fp16 or setting(cfg, "float16"):
        return torch.float16
    return torch.float32


def hub_kwargs(cfg: FtkConfig) -> dict[str, Any]:
    """``revision`` and ``token`` for every ``from_pretrained`` of the model's files."""
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if setting(cfg, "revision_of_model") is not None:
        kwargs["revision"] = setting(cfg, "revision_of_model")
    if setting(cfg, "hf_use_auth_token"):
        kwargs["token"] = True
    return kwargs


# --- config -------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add axolotl's model and tokenizer loading keys (top level)."""
    register(SECTION, ModelLoadingSettings, flat=True)


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str, ...], str]]:
    """Unknown class names, contradicting keys, values transformers 5 cannot honour."""
    return checks.config_problems(cfg)


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Before any data work: a token, the kernels package, a GPU, one process, as the keys need."""
    checks.check_environment(cfg, purpose)


@hookimpl
def training_arguments(cfg: FtkConfig) -> dict[str, Any]:
    """``bfloat16: true`` trains with bf16 mixed precision, as axolotl does."""
    return {"bf16": True} if setting(cfg, "bfloat16") and not cfg.bf16 else {}


# --- loading ------------------------------------------------------------------------------------


@hookimpl(trylast=True)
def load_tokenizer(cfg: FtkConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of ``tokenizer_config`` (or ``base_model``), with the class ``tokenizer_type`` names."""
    tokenizer_type = names.tokenizer_class(setting(cfg, "tokenizer_type"))
    kwargs = hub_kwargs(cfg)
    legacy = setting(cfg, "tokenizer_legacy")
    if legacy is not None:
        kwargs["legacy"] = legacy
    name = cfg.tokenizer_config or cfg.base_model
    try:
        tokenizer = tokenizer_type.from_pretrained(name, **kwargs)
    except LOAD_ERRORS as exc:
        raise _load_error("tokenizer", name, exc) from exc
    if legacy is not None and not names.honours_legacy(type(tokenizer)):
        say(f"tokenizer_legacy: {type(tokenizer).__name__} does not read the legacy flag; it has no effect")
    return tokenizer


def model_config(cfg: FtkConfig, model_type: Any) -> Any:
    """The base model's config with ``model_config``'s attributes set, or None when the key is unset.

    An attribute the config (or, for a multimodal model, its text config) does not have is an
    FtkError naming it.
    """
    overrides = setting(cfg, "overrides_of_model_config")
    if not overrides:
        return None
    from transformers import AutoConfig

    config_type = getattr(model_type, "config_class", None) or AutoConfig
    try:
        config = config_type.from_pretrained(cfg.base_model, **hub_kwargs(cfg))
    except LOAD_ERRORS as exc:
        raise _load_error("model config", cfg.base_model, exc) from exc
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key, value in overrides.items():
        target = config if hasattr(config, key) else text if hasattr(text, key) else None
        if target is None:
            known = sorted(set(config.to_dict()) | set(text.to_dict()))
            raise FtkError(
                f"model_config.{key}: {type(config).__name__} ({cfg.base_model}) has no attribute "
                f"{key!r}{suggest(key, known)}"
            )
        setattr(target, key, value)
    return config


def from_pretrained_kwargs(cfg: FtkConfig, load_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Everything ``from_pretrained`` gets: dtype, hub arguments, the loading keys, then ``load_kwargs``."""
    kwargs: dict[str, Any] = {"dtype": model_dtype(cfg), **hub_kwargs(cfg)}
    if cfg.attn_implementation is not None:
        kwargs["attn_implementation"] = cfg.attn_implementation
    for key in ("device_map", "experts_implementation"):
        if setting(cfg, key) is not None:
            kwargs[key] = setting(cfg, key)
    if setting(cfg, "use_kernels"):
        kwargs["use_kernels"] = True
    name = setting(cfg, "model_quantization_config")
    if name is not None:
        kwargs["quantization_config"] = names.quantization_config(
            name, setting(cfg, "model_quantization_config_kwargs")
        )
    kwargs.update(load_kwargs)
    return kwargs


@hookimpl(trylast=True)
def load_model(cfg: FtkConfig, tokenizer: PreTrainedTokenizerBase, load_kwargs: dict[str, Any]) -> Any:
    """``base_model`` with the class of ``model_type`` (AutoModelForCausalLM); ``load_kwargs`` (e.g. a
    ``quantization_config``) go to ``from_pretrained`` with the loading keys' arguments."""
    model_type, note = names.model_class(setting(cfg, "model_type"))
    if note:
        say(note)
    kwargs = from_pretrained_kwargs(cfg, load_kwargs)
    config = model_config(cfg, model_type)
    if config is not None:
        kwargs["config"] = config
    try:
        model = model_type.from_pretrained(cfg.base_model, **kwargs)
    except LOAD_ERRORS as exc:
        raise _load_error("model", cfg.base_model, exc) from exc
    if model.generation_config is not None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model


@hookimpl
def post_model_load(cfg: FtkConfig, model: Any, tokenizer: PreTrainedTokenizerBase) -> None:
    """``resize_token_embeddings_to_32x``: grow the embeddings to the next multiple of 32 above the tokenizer."""
    if not setting(cfg, "resize_token_embeddings_to_32x"):
        return
    target = math.ceil(len(tokenizer) / RESIZE_MULTIPLE) * RESIZE_MULTIPLE
    if model.get_input_embeddings().num_embeddings >= target:
        return
    import torch

    with torch.random.fork_rng(devices=[]):  # the new rows are drawn the same way every time
        torch.manual_seed(cfg.seed)
        model.resize_token_embeddings(target)
