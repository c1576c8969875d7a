"""What the core itself needs from the machine, checked with the plugins' ``check_environment``.

Two things a config cannot show: whether transformers will train in bfloat16 here (it refuses on
a GPU without bf16 and on a lone CPU process, but only once the data are prepared and the model
loaded), and whether a Hub model is reachable when the Hub is offline (``HF_HUB_OFFLINE=1``): then
only the local cache can answer, and it answers at once.
"""

from __future__ import annotations

from pathlib import Path

from ftk.core.config.paths import Problem, is_hub_id, looks_like_path
from ftk.core.config.schema import FtkConfig
from ftk.core.launch import distributed_arguments

#: The file each key's Hub repository must have in the cache.
HUB_FILES = {"base_model": "config.json", "tokenizer_config": "tokenizer_config.json"}


def bf16_problem() -> str | None:
    """Why transformers would refuse ``bf16: true`` for a run in this process, or None when it trains."""
    if distributed_arguments().get("use_cpu"):
        return None  # several processes on a machine without GPUs: bf16 autocast on the CPU
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    if is_torch_bf16_gpu_available() or is_torch_xla_available():
        return None
    import torch

    if torch.cuda.is_available():
        return (
            f"the GPU ({torch.cuda.get_device_name(0)}) has no bfloat16 support; "
            "set fp16: true instead (or bf16: false)"
        )
    return (
        "this machine has no GPU, and transformers trains in bfloat16 on the CPU only with "
        "--nproc-per-node 2 or more; set bf16: false to train in float32"
    )


def tf32_problem() -> str | None:
    """Why transformers would refuse ``tf32: true`` here (it needs an Ampere or newer NVIDIA GPU), or None."""
    from transformers.utils import is_torch_tf32_available

    if is_torch_tf32_available():
        return None
    return "TF32 needs an Ampere or newer NVIDIA GPU and this machine has none; set tf32: false (or auto)"


def resolve_auto_precision(cfg: FtkConfig, explicit_fp16: bool) -> list[tuple[tuple[str, ...], str]]:
    """Turn ``bf16: auto`` and ``tf32: auto`` into true or false for this machine; returns notes.

    ``bf16: auto`` is bfloat16 where it trains here; otherwise float16 on a CUDA GPU (unless the
    config sets ``fp16`` itself) and float32 without one.  ``tf32: auto`` is on where the GPU has TF32.
    """
    notes: list[tuple[tuple[str, ...], str]] = []
    if cfg.bf16 == "auto":
        if cfg.fp16:
            cfg.bf16 = False
        elif bf16_problem() is None:
            cfg.bf16 = True
            notes.append((("bf16",), "auto: bfloat16 (supported here)"))
        else:
            import torch

            cfg.bf16 = False
            if torch.cuda.is_available() and not explicit_fp16:
                cfg.fp16 = True
                notes.append((("bf16",), "auto: float16 (this GPU has no bfloat16)"))
            else:
                notes.append((("bf16",), "auto: float32 (no GPU with bfloat16 here)"))
    if cfg.tf32 == "auto":
        cfg.tf32 = tf32_problem() is None
    return notes


def hub_problem(key: str, value: str, config_dir: Path) -> str | None:
    """Why the Hub id ``value`` cannot be loaded while the Hub is offline (not in the cache), or None."""
    if Path(value).exists() or looks_like_path(value, config_dir) or not is_hub_id(value):
        return None  # a local path (ftk.core.config.paths checks it) or a URL for a plugin's loader
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.is_offline_mode():
        return None
    if isinstance(try_to_load_from_cache(value, HUB_FILES[key]), str):
        return None
    return (
        f"{value} is not a local directory and not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
        f"and the Hub is offline (HF_HUB_OFFLINE=1): download it where the Hub is reachable "
        f"(hf download {value}) or give a local directory"
    )


def attention_problem(implementation: str) -> str | None:
    """Why the model cannot load with ``attn_implementation: flash_attention_2`` here, or None.

    transformers needs a CUDA GPU and either the ``flash-attn`` package or the ``kernels`` package
    with the Hub reachable (it then fetches a prebuilt kernel); it finds out only while loading.
    """
    if "/" in implementation:
        return hub_kernel_problem(implementation)
    if implementation != "flash_attention_2":
        return None
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "flash_attention_2 needs a CUDA GPU and this machine has none; use sdpa (or leave it unset)"
    if importlib.util.find_spec("flash_attn") is not None:
        return None
    from huggingface_hub import constants

    if importlib.util.find_spec("kernels") is not None and not constants.is_offline_mode():
        return None
    return (
        "flash_attention_2 needs the flash-attn package (pip install flash-attn), or the kernels "
        "package with the Hub reachable; use sdpa otherwise"
    )


def hub_kernel_problem(kernel: str) -> str | None:
    """Why transformers cannot load the Hub attention kernel ``kernel`` here, or None.

    It needs the ``kernels`` package, the Hub (or its cache) and a GPU the kernel was built for.
    """
    import importlib.util

    import torch
    from huggingface_hub import constants

    if not torch.cuda.is_available():
        return f"the Hub kernel {kernel} needs a CUDA GPU and this machine has none; use sdpa (or leave it unset)"
    if importlib.util.find_spec("kernels") is None:
        return f"the Hub kernel {kernel} needs the kernels package: pip install kernels"
    if constants.is_offline_mode():
        return f"the Hub kernel {kernel} is fetched from the Hub, which is offline (HF_HUB_OFFLINE); use sdpa"
    return None


def machine_problems(cfg: FtkConfig, config_dir: Path, purpose: str) -> list[Problem]:
    """The core's problems with this machine for ``cfg`` and a command of ``purpose``, as (key path, message)."""
    from ftk.core.lifecycle import TRAINING

    problems: list[Problem] = []
    if purpose != "preprocess" and cfg.attn_implementation:
        problem = attention_problem(cfg.attn_implementation)
        if problem is not None:
            problems.append((("attn_implementation",), problem))
    for key in HUB_FILES:
        value = getattr(cfg, key)
        problem = hub_problem(key, value, config_dir) if value else None
        if problem is not None:
            problems.append(((key,), problem))
    if purpose in TRAINING and cfg.bf16:
        problem = bf16_problem()
        if problem is not None:
            problems.append((("bf16",), problem))
    if purpose in TRAINING and cfg.tf32:
        problem = tf32_problem()
        if problem is not None:
            problems.append((("tf32",), problem))
    return problems
