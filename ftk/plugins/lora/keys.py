"""The ``lora_*`` and ``peft_*`` keys (axolotl's names) and the checks that need no model."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field

from ftk.core.config.schema import FtkConfig, StrictModel

SECTION = "lora"

Problems = list[tuple[tuple[str | int, ...], str]]


class LoftQSettings(StrictModel):
    """``peft.loftq_config``: LoftQ initialisation of the LoRA weights."""

    loftq_bits: Literal[4, 8] = Field(
        4,
        description="Bits of the quantization LoftQ fits the LoRA weights to (4: nf4, 8: int8); "
        "training replaces each adapted weight W with its quantized round trip Q and starts LoRA at W - Q.",
    )


class PeftSettings(StrictModel):
    """``peft``: options passed to peft's LoraConfig that axolotl nests under one key."""

    loftq_config: LoftQSettings | None = Field(
        None, description="LoftQ initialisation (peft init_lora_weights: loftq); needs bitsandbytes."
    )


class LoraSettings(StrictModel):
    """The top-level ``lora_*`` and ``peft_*`` keys (axolotl's names)."""

    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | str | None = Field(
        None,
        description="Modules to adapt: a list of names (a module's full name or its last dotted parts, "
        "e.g. q_proj), or one string, a regular expression that must match whole module names "
        r"(e.g. 'model.layers.[\d]+.(mlp|self_attn).(up|down|gate|q|k|v|o)_proj').",
    )
    lora_target_parameters: list[str] | None = Field(
        None,
        description="Parameters to adapt directly (peft target_parameters), e.g. fused MoE expert weights "
        "mlp.experts.gate_up_proj; a name matches a parameter's full name or its last dotted parts. "
        "Needs lora_dropout: 0.",
    )
    lora_target_linear: bool = Field(
        False,
        description="Adapt every linear layer except the output head (on MoE models: the experts too, not the router).",
    )
    lora_fan_in_fan_out: bool = Field(
        False,
        description="The adapted layers store their weight as (in, out) (GPT-2 style Conv1D); peft's fan_in_fan_out. "
        "peft uses the layer's own layout: this only matters where it agrees (a note says when it does not).",
    )
    lora_modules_to_save: list[str] | None = Field(
        None,
        description="Modules trained in full and saved with the adapter (e.g. embed_tokens, lm_head); "
        "added automatically when new tokens are added.",
    )
    peft_layers_to_transform: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        description="Adapt only the targeted modules of these layer numbers (peft layers_to_transform); "
        "not with a regex lora_target_modules.",
    )
    peft_layers_pattern: list[str] | None = Field(
        None,
        description="Name of the module list that holds the layers (e.g. layers, h), where peft cannot "
        "find it (peft layers_pattern); needs peft_layers_to_transform.",
    )
    peft: PeftSettings | None = Field(None, description="peft options axolotl nests: loftq_config.")
    peft_use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA.")
    peft_use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r) instead of alpha / r.")


def settings(cfg: FtkConfig) -> LoraSettings:
    """The LoRA keys of ``cfg``."""
    return cfg.section(SECTION)


def loftq_bits(lora: LoraSettings) -> int | None:
    """The ``peft.loftq_config.loftq_bits`` asked for, or None without LoftQ."""
    if lora.peft is None or lora.peft.loftq_config is None:
        return None
    return lora.peft.loftq_config.loftq_bits


def _without_adapter(lora: LoraSettings) -> Problems:
    """Keys that only an adapter reads, set on a full fine-tuning run."""
    problems: Problems = []
    if lora.lora_modules_to_save:
        problems.append((("lora_modules_to_save",), "needs an adapter (full fine-tuning trains everything)"))
    for key in ("peft_use_dora", "peft_use_rslora"):
        if getattr(lora, key):
            problems.append(((key,), "needs adapter: lora (or qlora)"))
            break
    for key in ("lora_target_parameters", "peft_layers_to_transform", "lora_fan_in_fan_out"):
        if getattr(lora, key):
            problems.append(((key,), "needs adapter: lora (or qlora)"))
    if loftq_bits(lora) is not None:
        problems.append((("peft", "loftq_config"), "needs adapter: lora"))
    return problems


def _targets(lora: LoraSettings) -> Problems:
    problems: Problems = []
    if isinstance(lora.lora_target_modules, str):
        try:
            re.compile(lora.lora_target_modules)
        except re.error as exc:
            problems.append(
                (
                    ("lora_target_modules",),
                    f"{lora.lora_target_modules!r} is not a valid regular expression: {exc}",
                )
            )
        if lora.peft_layers_to_transform:
            problems.append(
                (
                    ("peft_layers_to_transform",),
                    "peft ignores it when lora_target_modules is a regex: write the layer numbers "
                    "into the regex instead (e.g. layers.(0|1|2).)",
                )
            )
    if lora.peft_layers_pattern and not lora.peft_layers_to_transform:
        problems.append(
            (("peft_layers_pattern",), "needs peft_layers_to_transform (the layer numbers to adapt)")
        )
    if lora.lora_target_parameters:
        why = "with lora_target_parameters: peft's ParamWrapper, which adapts parameters, has no"
        if lora.lora_dropout:
            problems.append((("lora_dropout",), f"must be 0 {why} dropout"))
        if lora.lora_fan_in_fan_out:
            problems.append((("lora_fan_in_fan_out",), f"must be false {why} fan_in_fan_out"))
        if lora.peft_use_dora:
            problems.append((("peft_use_dora",), "DoRA cannot adapt parameters (lora_target_parameters)"))
    return problems


def config_problems(cfg: FtkConfig) -> Problems:
    """Every check of the LoRA keys that needs no model."""
    lora = settings(cfg)
    if lora is None:
        return []
    if cfg.adapter is None:
        return _without_adapter(lora)
    problems = _targets(lora)
    if loftq_bits(lora) is not None and (
        cfg.adapter == "qlora" or getattr(cfg, "load_in_4bit", None) or getattr(cfg, "load_in_8bit", None)
    ):
        problems.append(
            (
                ("peft", "loftq_config"),
                "needs a full-precision base (LoftQ quantizes the weights itself): "
                "use adapter: lora without load_in_4bit/load_in_8bit",
            )
        )
    return problems
