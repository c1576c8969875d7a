"""DeepSpeed configs: the ZeRO presets ftk ships, and reading and checking a user's JSON file.

The presets (``deepspeed: zero2`` in a config) are the JSON files beside this module:

* ``zero1``, ``zero2``, ``zero3``: ZeRO stage 1 (optimizer state partitioned), 2 (and gradients),
  3 (and parameters);
* ``zero2_offload``: ZeRO-2 with the optimizer state and step on the CPU;
* ``zero3_offload``: ZeRO-3 with the optimizer state and the parameters on the CPU;
* ``zero3_offload_params``: ZeRO-3 with the parameters on the CPU (the optimizer steps on the GPU).

Every value that transformers fills from ``TrainingArguments`` is ``"auto"``: the micro-batch size,
gradient accumulation, the global batch, gradient clipping, bf16/fp16, and the bucket sizes derived
from the model's hidden size.  No preset has an ``optimizer`` or ``scheduler`` block, so ftk's
``optimizer`` and ``lr_scheduler`` (the Trainer's hooks) drive training; the offload presets set
``zero_force_ds_cpu_optimizer: false`` so that DeepSpeed accepts that optimizer on the CPU.  The
ZeRO-3 presets set ``stage3_gather_16bit_weights_on_model_save: true``: without it the saved model
(a LoRA adapter too) would hold no weights.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

#: Preset names accepted by ``deepspeed:``, each a JSON file of this package.
PRESETS: tuple[str, ...] = (
    "zero1",
    "zero2",
    "zero3",
    "zero2_offload",
    "zero3_offload",
    "zero3_offload_params",
)

#: The DeepSpeed files axolotl ships in its repository's ``deepspeed_configs/`` folder, by file name:
#: the preset with the same ZeRO stage and the same offload, what the file sets, and whether it
#: turns bf16 on itself (ftk's presets take the precision from ``bf16``/``fp16`` instead).  Tuning
#: values (bucket sizes, live-parameter limits) are the preset's.
AXOLOTL_FILES: dict[str, tuple[str, str, bool]] = {
    "zero1.json": ("zero1", "ZeRO-1", False),
    "zero2.json": ("zero2_offload", "ZeRO-2 with the optimizer state on the CPU", False),
    "zero3.json": ("zero3", "ZeRO-3", False),
    "zero3_bf16.json": ("zero3", "ZeRO-3 in bf16", True),
    "zero3_bf16_cpuoffload_all.json": (
        "zero3_offload",
        "ZeRO-3 in bf16 with the optimizer state and the parameters on the CPU",
        True,
    ),
    "zero3_bf16_cpuoffload_params.json": (
        "zero3_offload_params",
        "ZeRO-3 in bf16 with the parameters on the CPU",
        True,
    ),
}
#: axolotl's files ftk has no preset for, and the nearest preset.
AXOLOTL_UNMATCHED: dict[str, tuple[str, str]] = {
    "zero1_torch_compile.json": ("zero1", "ZeRO-1 with a DeepSpeed compile block"),
    "zero2_torch_compile.json": (
        "zero2_offload",
        "ZeRO-2 (optimizer state on the CPU) with a DeepSpeed compile block",
    ),
}

#: The names DeepSpeed accepts for "gather ZeRO-3 weights into one 16-bit state dict when saving".
GATHER_ON_SAVE_KEYS = (
    "stage3_gather_16bit_weights_on_model_save",
    "gather_16bit_weights_on_model_save",
    "stage3_gather_fp16_weights_on_model_save",
)


class DeepSpeedConfigError(ValueError):
    """A ``deepspeed:`` value that names no preset, or a JSON file ftk cannot use; one line."""


def preset(name: str) -> dict[str, Any]:
    """A fresh copy of the shipped preset ``name`` (one of ``PRESETS``)."""
    if name not in PRESETS:
        raise DeepSpeedConfigError(f"no preset named {name!r}; presets: {', '.join(PRESETS)}")
    return json.loads(files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8"))


def looks_like_path(value: str) -> bool:
    """Whether ``deepspeed: value`` means a file rather than a (possibly misspelt) preset name."""
    return value.endswith(".json") or "/" in value or "\\" in value or Path(value).is_file()


def read_config_file(path: Path) -> dict[str, Any]:
    """Read and check a DeepSpeed JSON config; a JSON error names the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeepSpeedConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DeepSpeedConfigError(f"{path}: is a directory, not a DeepSpeed JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeepSpeedConfigError(f"{path}: cannot read it: {exc}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeepSpeedConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    check_config(config, str(path))
    return config


def check_config(config: Any, source: str) -> None:
    """Problems that would stop (or silently spoil) a run with this config, as ``DeepSpeedConfigError``."""
    if not isinstance(config, dict):
        raise DeepSpeedConfigError(f"{source}: must be a JSON object, not {type(config).__name__}")
    zero = config.get("zero_optimization")
    if not isinstance(zero, dict):
        raise DeepSpeedConfigError(
            f'{source}: needs a "zero_optimization" object (accelerate requires one), e.g. '
            '"zero_optimization": {"stage": 2}'
        )
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise DeepSpeedConfigError(f"{source}: zero_optimization.stage must be 0, 1, 2 or 3 (got {stage!r})")
    if stage == 3 and not any(zero.get(key) is True for key in GATHER_ON_SAVE_KEYS):
        raise DeepSpeedConfigError(
            f"{source}: ZeRO-3 needs zero_optimization.stage3_gather_16bit_weights_on_model_save: true, "
            "else the saved model (or LoRA adapter) would hold no weights"
        )


def load(value: str) -> dict[str, Any]:
    """The DeepSpeed config that ``deepspeed: value`` means: a preset, or a JSON file (relative to the cwd)."""
    if value in PRESETS:
        return preset(value)
    if looks_like_path(value):
        return read_config_file(Path(value))
    from ftk.core.errors import suggest

    raise DeepSpeedConfigError(
        f"unknown preset{suggest(value, list(PRESETS))}; use one of {', '.join(PRESETS)} "
        "or the path of a DeepSpeed JSON file"
    )


def zero_stage(config: dict[str, Any]) -> int:
    """The ZeRO stage of a checked config (0 when it sets none)."""
    return int(config.get("zero_optimization", {}).get("stage", 0))


def offloaded(config: dict[str, Any]) -> list[str]:
    """What the config moves off the GPU: ``"optimizer"`` and/or ``"param"`` (to the CPU or NVMe)."""
    zero = config.get("zero_optimization", {})
    return [
        what
        for what in ("optimizer", "param")
        if isinstance(zero.get(f"offload_{what}"), dict)
        and zero[f"offload_{what}"].get("device", "none") in ("cpu", "nvme")
    ]


def value_at(config: dict[str, Any], dotted: str) -> Any:
    """The value at ``a.b.c`` in a nested config, or None where a part is missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
