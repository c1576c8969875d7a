"""Checks of the model loading keys: against each other when the config is read, against the machine before any data work."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError, suggest
from ftk.core.launch import world_size
from ftk.core.lifecycle import TRAINING
from ftk.plugins.hf_model import names

Problems = list[tuple[tuple[str, ...], str]]


def setting(cfg: FtkConfig, key: str) -> Any:
    """The value of this plugin's key ``key`` (None when unset or when the plugin's keys are absent)."""
    return getattr(cfg, key, None)


def _name_problems(cfg: FtkConfig) -> Problems:
    found: Problems = []
    for key, check in (
        ("model_type", names.model_class_problem),
        ("tokenizer_type", names.tokenizer_class_problem),
    ):
        value = setting(cfg, key)
        problem = None if value is None else check(value)
        if problem:
            found.append(((key,), problem))
    experts = setting(cfg, "experts_implementation")
    if experts is not None and experts not in names.experts_implementations():
        found.append(
            (
                ("experts_implementation",),
                f"{experts!r} is not one of transformers' experts implementations "
                f"({', '.join(names.experts_implementations())}){suggest(experts, names.experts_implementations())}",
            )
        )
    return found


def _quantization_problems(cfg: FtkConfig) -> Problems:
    name = setting(cfg, "model_quantization_config")
    kwargs = setting(cfg, "model_quantization_config_kwargs")
    if name is None:
        if kwargs is not None:
            return [(("model_quantization_config_kwargs",), "applies with model_quantization_config only")]
        return []
    found: Problems = []
    try:
        names.quantization_config(name, kwargs)
    except ValueError as exc:
        key = (
            "model_quantization_config"
            if name not in names.quantization_config_names()
            else "model_quantization_config_kwargs"
        )
        found.append(((key,), str(exc)))
    except TypeError as exc:
        found.append((("model_quantization_config_kwargs",), str(exc)))
    for other in ("load_in_4bit", "load_in_8bit"):
        if getattr(cfg, other, None):
            found.append(
                (
                    ("model_quantization_config",),
                    f"{other} quantizes the model too (bitsandbytes); choose one",
                )
            )
    if getattr(cfg, "quantization", None) is not None:
        found.append(
            (("model_quantization_config",), "quantization: quantizes the model too (torchao); choose one")
        )
    return found


def _precision_problems(cfg: FtkConfig) -> Problems:
    found: Problems = []
    if setting(cfg, "float16"):
        for other in ("bf16", "fp16", "bfloat16"):
            if getattr(cfg, other, None):
                found.append(
                    (
                        ("float16",),
                        f"trains float16 weights without mixed precision, and {other} is true; choose one",
                    )
                )
    if setting(cfg, "bfloat16") and cfg.fp16:
        found.append(
            (("bfloat16",), "loads and trains in bfloat16 (as bf16 does), and fp16 is true; choose one")
        )
    return found


def _placement_problems(cfg: FtkConfig) -> Problems:
    if setting(cfg, "device_map") is None:
        return []
    sharded = [key for key in ("deepspeed", "fsdp", "fsdp_config") if getattr(cfg, key, None)]
    return [
        (
            ("device_map",),
            f"places the model for one process, and {key} shards it over processes; remove device_map",
        )
        for key in sharded[:1]
    ]


def config_problems(cfg: FtkConfig) -> Problems:
    """Problems of the loading keys that the config alone shows, as (key path, message)."""
    found = (
        _name_problems(cfg)
        + _quantization_problems(cfg)
        + _precision_problems(cfg)
        + _placement_problems(cfg)
    )
    if setting(cfg, "tokenizer_use_fast") is False:
        found.append(
            (
                ("tokenizer_use_fast",),
                "transformers 5 has fast tokenizers only (AutoTokenizer ignores use_fast); remove the key",
            )
        )
    if setting(cfg, "low_cpu_mem_usage") is False:
        found.append(
            (
                ("low_cpu_mem_usage",),
                "transformers 5 always loads weights this way (from_pretrained drops the argument); remove the key",
            )
        )
    return found


# --- this machine -------------------------------------------------------------------------------


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def kernels_problem() -> str | None:
    """Why ``use_kernels: true`` cannot run here, or None."""
    from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION, is_kernels_available

    if importlib.util.find_spec("kernels") is None:
        return (
            f"needs the kernels package: pip install 'kernels>={KERNELS_MIN_VERSION},<{KERNELS_MAX_VERSION}'"
        )
    if not is_kernels_available():
        return (
            f"transformers needs kernels >={KERNELS_MIN_VERSION},<{KERNELS_MAX_VERSION}: "
            f"pip install 'kernels>={KERNELS_MIN_VERSION},<{KERNELS_MAX_VERSION}'"
        )
    if not _has_gpu():
        return (
            "transformers' kernel table has kernels for CUDA, ROCm and XPU GPUs only, and this machine has "
            "none; remove use_kernels"
        )
    return None


def token_problem() -> str | None:
    """Why ``hf_use_auth_token: true`` cannot send a token from here, or None."""
    from huggingface_hub import get_token

    if get_token() is None:
        return "no Hugging Face token on this machine: run `hf auth login` or set HF_TOKEN"
    return None


def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Stop with an FtkError naming the key when this machine cannot load the model as the config asks."""
    from ftk.core.machine import bf16_problem

    from_hub = [name for name in (cfg.base_model, cfg.tokenizer_config) if name and not Path(name).exists()]
    if setting(cfg, "hf_use_auth_token") and from_hub and (problem := token_problem()):
        raise FtkError(f"hf_use_auth_token: {problem}")
    if purpose == "preprocess":
        return  # no model is loaded
    if setting(cfg, "use_kernels") and (problem := kernels_problem()):
        raise FtkError(f"use_kernels: {problem}")
    experts = setting(cfg, "experts_implementation")
    if experts in names.GPU_EXPERTS and not _has_gpu():
        raise FtkError(
            f"experts_implementation: {experts} runs CUDA kernels and this machine has no GPU; use grouped_mm or eager"
        )
    if setting(cfg, "device_map") is not None and world_size() > 1:
        raise FtkError(
            f"device_map: this run has {world_size()} processes, each holding a copy of the model; "
            "device_map spreads one copy over the GPUs of one process: remove it (or launch one process)"
        )
    if purpose in TRAINING and setting(cfg, "bfloat16") and not cfg.bf16 and (problem := bf16_problem()):
        raise FtkError(f"bfloat16: {problem.replace('set bf16: false', 'remove bfloat16')}")
