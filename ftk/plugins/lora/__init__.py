"""Built-in plugin: LoRA adapters through peft (``adapter: lora``, and ``qlora`` on a 4-bit base), and ``ftk merge-lora``.

``lora_target_modules`` names modules (or fused MoE expert weights) or is one regex over whole
module names; ``lora_target_parameters`` names parameters; ``lora_target_linear`` adapts every
linear layer but the output head and MoE routers; ``peft_layers_to_transform`` keeps some layers.
The rows of tokens the run added are trained through peft's ``trainable_token_indices`` unless
the whole embedding is in ``lora_modules_to_save`` (``docs/training.md``).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError, say
from ftk.core.hookspecs import hookimpl
from ftk.plugins.lora import keys
from ftk.plugins.lora.keys import SECTION, LoraSettings, loftq_bits, settings
from ftk.plugins.lora.merge import (
    ADAPTER_CONFIG_NAME,
    MERGED_DIR_NAME,
    merge_arguments,
    merge_lora,
    run_merge,
)
from ftk.plugins.lora.targets import (
    check_layers,
    embedding_plan,
    linear_targets,
    named_targets,
    parameter_targets,
    parameters_in_layers,
    parametrization_matches,
    peft_parameter_names,
    regex_targets,
    report_unadapted,
    targeted_linears,
)

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig

    from ftk.core.registry import Register

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "MERGED_DIR_NAME",
    "LoraSettings",
    "apply_lora",
    "lora_config",
    "merge_lora",
    "settings",
]

#: The adapter kinds this plugin registers (qlora: LoRA on a 4-bit base, see the quantization plugin).
ADAPTERS = ("lora", "qlora")


def _targets(lora: LoraSettings, model: torch.nn.Module) -> tuple[list[str] | str | None, list[str]]:
    """peft's (target_modules, target_parameters) for the keys; None lets peft choose per architecture."""
    modules: list[str] = []
    parameters: list[str] = []
    if lora.lora_target_linear:
        modules, parameters = linear_targets(model)
    wanted = lora.lora_target_modules
    regex = wanted if isinstance(wanted, str) else None
    if regex is not None:
        modules = sorted(set(modules) | set(regex_targets(model, regex)))
    elif isinstance(wanted, list) and wanted:
        named_modules, named_parameters = named_targets(model, wanted)
        modules = sorted(set(modules) | set(named_modules))
        parameters = sorted(set(parameters) | set(named_parameters))
    if lora.lora_target_parameters:
        parameters = sorted(set(parameters) | set(parameter_targets(model, lora.lora_target_parameters)))
    if regex is not None and not lora.lora_target_linear:
        return regex, parameters  # the regex itself, as peft matches and records it
    return (modules if lora.lora_target_linear or wanted else None), parameters


def _init_kwargs(lora: LoraSettings) -> dict[str, Any]:
    bits = loftq_bits(lora)
    if bits is None:
        return {}
    from peft import LoftQConfig

    return {"init_lora_weights": "loftq", "loftq_config": LoftQConfig(loftq_bits=bits)}


def lora_config(cfg: FtkConfig, model: torch.nn.Module, new_token_ids: tuple[int, ...] = ()) -> LoraConfig:
    """peft's LoraConfig for the ``lora_*`` and ``peft_*`` keys, resolved against ``model``."""
    from peft import LoraConfig

    lora = settings(cfg)
    modules, parameters = _targets(lora, model)
    if parameters and lora.peft_use_dora:
        raise FtkError(
            f"peft_use_dora: DoRA cannot adapt fused expert weights ({', '.join(parameters)}); "
            "set lora_target_modules to the attention layers instead"
        )
    if parameters and lora.lora_dropout:
        raise FtkError(
            f"lora_dropout: must be 0 when weights are adapted as parameters ({', '.join(parameters)}): "
            "peft's ParamWrapper has no dropout"
        )
    plan = embedding_plan(model, lora.lora_modules_to_save, new_token_ids)
    if plan.note:
        say(f"lora: {plan.note}")
    config = LoraConfig(
        r=lora.lora_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=modules,
        target_parameters=peft_parameter_names(model, parameters) if parameters else None,
        layers_to_transform=lora.peft_layers_to_transform,
        layers_pattern=lora.peft_layers_pattern,
        fan_in_fan_out=lora.lora_fan_in_fan_out,
        modules_to_save=plan.modules_to_save or None,
        trainable_token_indices=plan.trainable_token_indices or None,
        ensure_weight_tying=plan.tie_weights,
        use_dora=lora.peft_use_dora,
        use_rslora=lora.peft_use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
        **_init_kwargs(lora),
    )
    if lora.peft_layers_to_transform:
        check_layers(model, config)
        if config.target_parameters:  # peft applies layers_to_transform to modules only
            config.target_parameters = parameters_in_layers(model, config, lora.peft_layers_to_transform)
    bookkeeping = parametrization_matches(model, config)  # e.g. 4-bit experts' "parametrizations.down_proj"
    if bookkeeping:
        config.exclude_modules = bookkeeping
    return config


def _peft_error(exc: Exception, cfg: LoraSettings) -> FtkError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if cfg.peft_use_dora and "dora" in first_line.lower():
        return FtkError(f"peft_use_dora: {first_line}")
    if "target_parameters" in first_line or "ParamWrapper" in first_line:
        return FtkError(f"lora_target_parameters: {first_line}")
    if "target_modules" in first_line and not (cfg.lora_target_modules or cfg.lora_target_linear):
        return FtkError(
            f"lora_target_modules: peft has no default for this model ({first_line}); "
            "set lora_target_modules or lora_target_linear: true"
        )
    return FtkError(f"lora_target_modules: {first_line}")


def _fan_in_fan_out_note(lora: LoraSettings, model: torch.nn.Module, wanted: set[str]) -> None:
    """Say when ``lora_fan_in_fan_out`` disagrees with the adapted layers (peft follows the layers)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = {type(model.get_submodule(name)) for name in wanted}
    linear = any(issubclass(kind, torch.nn.Linear) for kind in kinds)
    conv1d = any(issubclass(kind, Conv1D) for kind in kinds)
    if lora.lora_fan_in_fan_out and linear:
        say(
            "lora: lora_fan_in_fan_out: true does not apply to nn.Linear layers (their weight is (out, in)); off for them"
        )
    if not lora.lora_fan_in_fan_out and conv1d:
        say("lora: the adapted layers are Conv1D (weight (in, out)): peft turns fan_in_fan_out on for them")


def apply_lora(cfg: FtkConfig, model: Any, new_token_ids: tuple[int, ...] = ()) -> Any:
    """Wrap ``model`` with the LoRA adapter the keys describe; the rows of ``new_token_ids`` train too."""
    import warnings

    from peft import get_peft_model

    config = lora_config(cfg, model, new_token_ids)
    lora = settings(cfg)
    wanted = targeted_linears(model, config)
    _fan_in_fan_out_note(lora, model, wanted | _conv1d_targets(model, config))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to")  # said above, once
            peft_model = get_peft_model(model, config)
    except (ValueError, TypeError) as exc:  # e.g. a target module type peft cannot adapt
        raise _peft_error(exc, lora) from exc
    if loftq_bits(lora):
        _rescale_loftq(peft_model)
    missed = report_unadapted(wanted, peft_model)
    if missed:
        shown = ", ".join(missed[:4]) + (", ..." if len(missed) > 4 else "")
        say(f"lora: warning: peft left {len(missed)} targeted linear layers without an adapter: {shown}")
    trainable, total = peft_model.get_nb_trainable_parameters()
    variant = " (DoRA)" if lora.peft_use_dora else ""
    variant += " (rsLoRA)" if lora.peft_use_rslora else ""
    variant += f" (LoftQ {loftq_bits(lora)}-bit init)" if loftq_bits(lora) else ""
    say(
        f"lora{variant}: r={lora.lora_r}, alpha={lora.lora_alpha}; "
        f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.2f}%)"
    )
    if cfg.gradient_checkpointing:
        # Frozen embeddings produce no grad; checkpointed blocks need inputs that require one.
        peft_model.enable_input_require_grads()
    return peft_model


def _rescale_loftq(peft_model: Any) -> None:
    """Make LoftQ's start exact for any ``lora_alpha``: W = Q + scale * B @ A.

    peft fits B @ A to the quantization error W - Q but ignores the LoRA scale (alpha / r, or
    alpha / sqrt(r) with rsLoRA), so the layer starts at Q + scale * (W - Q); dividing A and B by
    sqrt(scale) gives back W (to the rank-r fit).
    """
    import math

    from peft.tuners.lora import LoraLayer

    layers: list[Any] = [module for module in peft_model.modules() if isinstance(module, LoraLayer)]
    for layer in layers:
        if "default" in layer.lora_A:
            factor = 1 / math.sqrt(layer.scaling["default"])
            layer.lora_A["default"].weight.data.mul_(factor)
            layer.lora_B["default"].weight.data.mul_(factor)


def _conv1d_targets(model: torch.nn.Module, config: LoraConfig) -> set[str]:
    from transformers.pytorch_utils import Conv1D

    from ftk.plugins.lora.targets import targeted_modules

    return {name for name in targeted_modules(model, config) if isinstance(model.get_submodule(name), Conv1D)}


# --- hooks -------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level ``lora_*`` and ``peft_*`` keys."""
    register(SECTION, LoraSettings, flat=True)


@hookimpl
def register_adapters(register: Register) -> None:
    """Offer ``adapter: lora`` and ``adapter: qlora`` (the same adapter; qlora asks for a 4-bit base)."""
    for name in ADAPTERS:
        register(name, apply_lora)


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """LoRA keys that need an adapter, regexes that do not compile, keys that contradict each other."""
    return keys.config_problems(cfg)


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """LoftQ quantizes the weights it starts from with bitsandbytes (on the CPU too) and needs scipy."""
    if purpose != "train" or cfg.adapter is None or loftq_bits(settings(cfg)) is None:
        return
    missing = [name for name in ("bitsandbytes", "scipy") if importlib.util.find_spec(name) is None]
    if missing:
        raise FtkError(
            f"peft.loftq_config: LoftQ needs {' and '.join(missing)} (pip install {' '.join(missing)})"
        )


@hookimpl
def register_commands(register: Register) -> None:
    """Contribute the ``merge-lora`` command."""
    register(
        name="merge-lora",
        help="merge a trained LoRA/DoRA/QLoRA adapter into its base model; save the full model",
        add_arguments=merge_arguments,
        run=run_merge,
    )
