"""transformers classes and implementations named in a config, looked up by name without loading a model.

``model_type``, ``tokenizer_type`` and ``model_quantization_config`` name classes of the
``transformers`` package (axolotl's keys); ``experts_implementation`` names one of transformers'
mixture-of-experts kernels.  Each lookup returns the class or a problem message, so that the
config check can report every bad name at once.
"""

from __future__ import annotations

import functools
from typing import Any

from ftk.core.errors import suggest

#: The default of ``model_type``.
CAUSAL_LM_AUTO = "AutoModelForCausalLM"
#: The default of ``tokenizer_type``.
TOKENIZER_AUTO = "AutoTokenizer"
#: Experts implementations that run CUDA kernels only (DeepGEMM, SonicMoE).
GPU_EXPERTS = frozenset({"deepgemm", "deepgemm_megamoe", "sonicmoe"})


def _transformers_attribute(name: str) -> Any:
    """``transformers.<name>``, or None when there is no such name (or it cannot be imported here)."""
    import transformers

    try:
        return getattr(transformers, name)
    except (AttributeError, ImportError, RuntimeError):
        return None


def _mapping_names(mapping: dict[str, Any]) -> list[str]:
    """The class names in one of transformers' auto mappings (values may be tuples)."""
    names: list[str] = []
    for value in mapping.values():
        names += [value] if isinstance(value, str) else [v for v in value or () if isinstance(v, str)]
    return names


def causal_lm_names() -> list[str]:
    """Every model class name AutoModelForCausalLM can load (plus AutoModelForCausalLM itself)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return [CAUSAL_LM_AUTO, *_mapping_names(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)]


def _model_family(name: str) -> str | None:
    """The ``model_type`` (family) whose auto mappings name the class ``name``, if any."""
    from transformers.models.auto import modeling_auto

    for attribute in dir(modeling_auto):
        mapping = getattr(modeling_auto, attribute)
        if not attribute.endswith("_MAPPING_NAMES") or not isinstance(mapping, dict):
            continue
        for family, value in mapping.items():
            if name == value or (isinstance(value, tuple) and name in value):
                return str(family)
    return None


def text_class_for(name: str) -> str | None:
    """For a multimodal ``...ForConditionalGeneration`` class that AutoModelForCausalLM does not load
    itself: the causal-LM class AutoModelForCausalLM loads for its checkpoints (its text model), or None."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    family = _model_family(name)
    text = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(family) if family else None
    return text if isinstance(text, str) else None


def model_class_problem(name: str) -> str | None:
    """Why ``model_type: name`` cannot load a causal LM to train, or None."""
    if name in causal_lm_names():
        return None
    found = _transformers_attribute(name)
    if found is None or not isinstance(found, type) or not hasattr(found, "from_pretrained"):
        return f"{name!r} is not a transformers model class{suggest(name, causal_lm_names())}"
    if name.endswith("ForConditionalGeneration"):
        if text_class_for(name) is not None:
            return None
        return (
            f"{name} is a multimodal model class and transformers has no causal-LM (text) class for its "
            "checkpoints; ftk trains causal language models on text only"
        )
    return (
        f"ftk trains causal language models (text) and {name} is not one; "
        f"use {CAUSAL_LM_AUTO} or the family's ...ForCausalLM class"
    )


def model_class(name: str | None) -> tuple[Any, str | None]:
    """The class that loads the model for ``model_type: name``, and a note when it is not that class.

    A multimodal ``...ForConditionalGeneration`` class whose checkpoints AutoModelForCausalLM loads
    as a text model (Llama 4) is loaded that way: the note says so.
    """
    import transformers

    if name is None or name == CAUSAL_LM_AUTO:
        return transformers.AutoModelForCausalLM, None
    if name not in causal_lm_names() and name.endswith("ForConditionalGeneration"):
        text = text_class_for(name)
        note = (
            f"model_type: {name} is multimodal; ftk trains its text model ({text}, through {CAUSAL_LM_AUTO})"
        )
        return transformers.AutoModelForCausalLM, note
    return getattr(transformers, name), None


def tokenizer_names() -> list[str]:
    """Tokenizer class names transformers maps model families to (for did-you-mean hints)."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    return sorted({TOKENIZER_AUTO, "PreTrainedTokenizerFast", *_mapping_names(TOKENIZER_MAPPING_NAMES)})


def tokenizer_class(name: str | None) -> Any:
    """The class ``tokenizer_type: name`` names (AutoTokenizer when unset); None when it is no tokenizer class."""
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    if name is None or name == TOKENIZER_AUTO:
        return AutoTokenizer
    found = _transformers_attribute(name)
    if isinstance(found, type) and issubclass(found, PreTrainedTokenizerBase):
        return found
    return None


def tokenizer_class_problem(name: str) -> str | None:
    """Why ``tokenizer_type: name`` names no tokenizer class, or None."""
    if tokenizer_class(name) is not None:
        return None
    return f"{name!r} is not a transformers tokenizer class{suggest(name, tokenizer_names())}"


def honours_legacy(tokenizer_type: type) -> bool:
    """Whether a tokenizer class reads the ``legacy`` flag (Llama's; sentencepiece-backed classes)."""
    import inspect

    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    if issubclass(tokenizer_type, SentencePieceBackend):
        return True
    return "legacy" in inspect.signature(tokenizer_type.__init__).parameters


@functools.lru_cache(maxsize=1)
def quantization_config_names() -> tuple[str, ...]:
    """The names of transformers' quantization config classes (``BitsAndBytesConfig``, ``Mxfp4Config``...)."""
    from transformers.utils import quantization_config as module

    return tuple(
        sorted(
            name
            for name, found in vars(module).items()
            if isinstance(found, type)
            and issubclass(found, module.QuantizationConfigMixin)
            and found is not module.QuantizationConfigMixin
            and not name.startswith("_")
        )
    )


def quantization_config(name: str, kwargs: dict[str, Any] | None) -> Any:
    """``<name>(**kwargs)`` of transformers' quantization configs; ValueError naming the problem when
    ``name`` is no such class, TypeError when it does not take ``kwargs``."""
    import inspect

    from transformers.utils import quantization_config as module

    if name not in quantization_config_names():
        raise ValueError(
            f"{name!r} is not a transformers quantization config class"
            f"{suggest(name, list(quantization_config_names()))}"
        )
    config_type = getattr(module, name)
    parameters = inspect.signature(config_type.__init__).parameters
    accepted = [key for key, p in parameters.items() if key != "self" and p.kind is not p.VAR_KEYWORD]
    for key in kwargs or {}:
        if key not in accepted:
            raise TypeError(f"{key!r} is not an argument of {name}{suggest(key, accepted)}")
    return config_type(**(kwargs or {}))


def experts_implementations() -> list[str]:
    """The values transformers accepts for ``experts_implementation``."""
    from transformers.integrations.finegrained_fp8 import ALL_FP8_EXPERTS_FUNCTIONS
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    return ["eager", *sorted(set(ALL_EXPERTS_FUNCTIONS.keys()) | set(ALL_FP8_EXPERTS_FUNCTIONS.keys()))]
