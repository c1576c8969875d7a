"""Built-in plugin: Fully Sharded Data Parallel (FSDP2 only) through transformers' Trainer and accelerate.

The ``fsdp:`` section (axolotl's ``fsdp_config:``, with or without the ``fsdp_`` prefix on its
keys, and ``fsdp_version: 2``) maps onto ``TrainingArguments(fsdp=True, fsdp_config={...})``;
FSDP1 settings are errors that name their FSDP2 replacement.  FSDP runs on CUDA GPUs; with
``SHARDED_STATE_DICT`` checkpoints the final model is still saved whole (``docs/scaling.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, RootModel, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ftk.core.callbacks import TrainerCallback
from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.errors import FtkError, say, suggest
from ftk.core.hookspecs import hookimpl
from ftk.core.launch import one_process_note
from ftk.core.lifecycle import TRAINING

if TYPE_CHECKING:
    import torch
    from transformers import Trainer

    from ftk.core.data.pipeline import PreparedData
    from ftk.core.registry import Register

SECTION = "fsdp"
#: axolotl's name for the same section.
AXOLOTL_SECTION = "fsdp_config"
VERSION_KEY = "fsdp_version"
SUPPORTED_VERSION = 2

#: FSDP1 settings axolotl configs may carry, and what replaces each in FSDP2.
FSDP1_SETTINGS = {
    "sharding_strategy": "use reshard_after_forward (true: FULL_SHARD, false: SHARD_GRAD_OP)",
    "backward_prefetch": "FSDP2 prefetches by itself",
    "forward_prefetch": "FSDP2 prefetches by itself",
    "use_orig_params": "FSDP2 always keeps the original parameters",
    "sync_module_states": "FSDP2 shards the weights every process loaded",
    "limit_all_gathers": "FSDP2 needs no rate limiter",
}

Problem = tuple[tuple[str | int, ...], str]


def _key(name: str) -> AliasChoices:
    """Accept ``name`` and axolotl's ``fsdp_name``."""
    return AliasChoices(name, f"fsdp_{name}")


def _check_version(value: Any) -> Any:
    if value != SUPPORTED_VERSION or isinstance(value, bool):
        raise PydanticCustomError(
            "fsdp_version",
            "ftk supports FSDP version 2 only (per-parameter sharding with fully_shard); "
            "FSDP1 is deprecated in transformers",
        )
    return value


class FsdpSettings(StrictModel):
    """Config section ``fsdp:`` (or axolotl's ``fsdp_config:``): how FSDP2 shards the model."""

    version: int = Field(
        SUPPORTED_VERSION, validation_alias=_key("version"), description="FSDP version: 2 (the only one)."
    )
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"] = Field(
        "TRANSFORMER_BASED_WRAP",
        validation_alias=_key("auto_wrap_policy"),
        description="Which modules are sharded as one unit: each transformer layer, modules above a size, or none.",
    )
    transformer_layer_cls_to_wrap: list[str] | None = Field(
        None,
        validation_alias=_key("transformer_layer_cls_to_wrap"),
        description="Layer class names to wrap (default: the model's _no_split_modules).",
    )
    min_num_params: int | None = Field(
        None,
        ge=1,
        validation_alias=_key("min_num_params"),
        description="With SIZE_BASED_WRAP: wrap modules with more parameters than this.",
    )
    reshard_after_forward: bool = Field(
        True,
        validation_alias=_key("reshard_after_forward"),
        description="Free gathered parameters after forward (less memory) or keep them until backward.",
    )
    offload_params: bool = Field(
        False,
        validation_alias=_key("offload_params"),
        description="Keep parameters, gradients and the optimizer step on the CPU.",
    )
    cpu_ram_efficient_loading: bool = Field(
        False,
        validation_alias=_key("cpu_ram_efficient_loading"),
        description="Load the base weights on rank 0 only (not available yet: must stay false).",
    )
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = Field(
        "FULL_STATE_DICT",
        validation_alias=_key("state_dict_type"),
        description="Checkpoint format: one whole state dict, or one shard per rank (the final model is whole).",
    )
    activation_checkpointing: bool = Field(
        False,
        validation_alias=_key("activation_checkpointing"),
        description="FSDP's activation checkpointing of each wrapped layer (instead of gradient_checkpointing).",
    )

    @model_validator(mode="before")
    @classmethod
    def _fsdp2_mapping(cls, data: Any) -> Any:
        if isinstance(data, list | str):
            raise PydanticCustomError(
                "fsdp_options",
                "a list of FSDP1 options (full_shard, auto_wrap, offload) is not supported: ftk runs FSDP2; "
                "write the settings as keys, e.g. reshard_after_forward: true, offload_params: true",
            )
        if isinstance(data, dict):
            for key in data:
                setting = str(key).removeprefix("fsdp_")
                if setting in FSDP1_SETTINGS:
                    raise PydanticCustomError(
                        "fsdp1_setting",
                        "{key} is an FSDP1 setting and ftk runs FSDP2: {instead}",
                        {"key": key, "instead": FSDP1_SETTINGS[setting]},
                    )
        return data

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        return _check_version(value)

    @field_validator("transformer_layer_cls_to_wrap", mode="before")
    @classmethod
    def _class_names(cls, value: Any) -> Any:
        """axolotl writes one class name, or several separated by commas."""
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("cpu_ram_efficient_loading")
    @classmethod
    def _not_yet(cls, value: bool) -> bool:
        if value:
            raise PydanticCustomError(
                "fsdp_loading",
                "not available: ftk loads the whole base model in every process before FSDP starts, "
                "so it would save no memory; set it to false",
            )
        return value

    @model_validator(mode="after")
    def _policy_settings(self) -> FsdpSettings:
        if self.transformer_layer_cls_to_wrap and self.auto_wrap_policy != "TRANSFORMER_BASED_WRAP":
            raise PydanticCustomError(
                "fsdp_policy",
                "transformer_layer_cls_to_wrap is only used with auto_wrap_policy: TRANSFORMER_BASED_WRAP",
            )
        if self.auto_wrap_policy == "SIZE_BASED_WRAP" and self.min_num_params is None:
            raise PydanticCustomError(
                "fsdp_policy", "auto_wrap_policy: SIZE_BASED_WRAP needs min_num_params (e.g. 100000000)"
            )
        if self.min_num_params is not None and self.auto_wrap_policy != "SIZE_BASED_WRAP":
            raise PydanticCustomError(
                "fsdp_policy", "min_num_params is only used with auto_wrap_policy: SIZE_BASED_WRAP"
            )
        return self


class FsdpVersion(RootModel[int]):
    """Top-level ``fsdp_version`` (axolotl's spelling): must be 2 and needs an ``fsdp`` section."""

    @field_validator("root", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        return _check_version(value)


# --- reading the config ------------------------------------------------------------------------


def fsdp_settings(cfg: FtkConfig) -> FsdpSettings | None:
    """The FSDP settings of ``cfg`` (from ``fsdp:`` or ``fsdp_config:``), or None when FSDP is off."""
    return cfg.section(SECTION) or cfg.section(AXOLOTL_SECTION)


def fsdp_training_arguments(settings: FsdpSettings) -> dict[str, Any]:
    """The ``TrainingArguments`` fields for ``settings``: ``fsdp`` and ``fsdp_config``."""
    fsdp_config: dict[str, Any] = {
        "version": settings.version,
        "auto_wrap_policy": settings.auto_wrap_policy,
        "reshard_after_forward": settings.reshard_after_forward,
        "cpu_offload": settings.offload_params,
        "cpu_ram_efficient_loading": settings.cpu_ram_efficient_loading,
        "state_dict_type": settings.state_dict_type,
        "activation_checkpointing": settings.activation_checkpointing,
    }
    if settings.transformer_layer_cls_to_wrap:
        fsdp_config["transformer_layer_cls_to_wrap"] = list(settings.transformer_layer_cls_to_wrap)
    if settings.min_num_params is not None:
        fsdp_config["min_num_params"] = settings.min_num_params
    return {"fsdp": True, "fsdp_config": fsdp_config}


@hookimpl
def config_problems(cfg: FtkConfig) -> list[Problem]:
    """Problems between the FSDP settings and the rest of the config, each as (key path, message)."""
    problems: list[Problem] = []
    both = cfg.section(SECTION) is not None and cfg.section(AXOLOTL_SECTION) is not None
    if both:
        problems.append(((AXOLOTL_SECTION,), f"and {SECTION} are both set; keep one of them"))
    settings = fsdp_settings(cfg)
    if settings is None:
        if cfg.section(VERSION_KEY) is not None:
            problems.append(
                ((VERSION_KEY,), f"is set but FSDP is off; add an {SECTION} section to train with FSDP")
            )
        return problems
    section = SECTION if cfg.section(SECTION) is not None else AXOLOTL_SECTION
    # deepspeed and fsdp both set: the deepspeed plugin reports it (once, at the deepspeed key).
    if settings.activation_checkpointing and cfg.gradient_checkpointing:
        problems.append(
            (
                ("gradient_checkpointing",),
                f"and {section}.activation_checkpointing are both on; with FSDP keep only "
                f"{section}.activation_checkpointing",
            )
        )
    return problems


def runtime_problem(cuda_devices: int) -> str | None:
    """Why an FSDP run cannot start on this machine, or None when it can."""
    if cuda_devices < 1:
        return (
            f"{SECTION}: FSDP2 runs on CUDA GPUs and none is visible (accelerate does not shard on the CPU); "
            f"remove {SECTION} to train on the CPU (--nproc-per-node N trains with DDP there)"
        )
    return None


def wrap_problem(settings: FsdpSettings, model: torch.nn.Module) -> str | None:
    """Why the layer classes to wrap do not fit ``model`` (a name it lacks, or none at all), or None."""
    if settings.auto_wrap_policy != "TRANSFORMER_BASED_WRAP":
        return None
    present = sorted({type(module).__name__ for module in model.modules()})
    names = settings.transformer_layer_cls_to_wrap
    origin = ""
    if names is None:
        names = sorted(getattr(model, "_no_split_modules", None) or [])
        origin = " (named by its _no_split_modules; set transformer_layer_cls_to_wrap)"
        if not names:
            return (
                f"{SECTION}.transformer_layer_cls_to_wrap: the model names no layer class to wrap "
                "(its _no_split_modules is empty); set it to the class of its transformer layers"
            )
    missing = [name for name in names if name not in present]
    if missing:
        return (
            f"{SECTION}.transformer_layer_cls_to_wrap: the model has no module of class "
            f"{missing[0]!r}{origin or suggest(missing[0], present)}"
        )
    return None


class FullStateDictAtEnd(TrainerCallback):
    """With sharded checkpoints, switch to a full state dict when training ends, so the final model is whole."""

    def __init__(self, fsdp_plugin: Any) -> None:
        self.fsdp_plugin = fsdp_plugin

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")


# --- hooks -------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the ``fsdp`` section, axolotl's ``fsdp_config`` spelling of it and ``fsdp_version``."""
    register(SECTION, FsdpSettings)
    register(AXOLOTL_SECTION, FsdpSettings)
    register(VERSION_KEY, FsdpVersion)


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Before any data work: there are GPUs to shard over."""
    if fsdp_settings(cfg) is None or purpose not in TRAINING:
        return
    import torch

    problem = runtime_problem(torch.cuda.device_count())
    if problem is not None:
        raise FtkError(problem)


@hookimpl
def training_arguments(cfg: FtkConfig) -> dict[str, Any]:
    """``fsdp`` and ``fsdp_config``; nothing when FSDP is off."""
    settings = fsdp_settings(cfg)
    return {} if settings is None else fsdp_training_arguments(settings)


@hookimpl
def pre_train(cfg: FtkConfig, trainer: Trainer, model: Any, data: PreparedData) -> None:
    """Check the layer classes against the model; keep the final save whole with sharded checkpoints."""
    import torch

    settings = fsdp_settings(cfg)
    if settings is None:
        return
    problem = wrap_problem(settings, model)
    if problem is not None:
        raise FtkError(problem)
    if settings.state_dict_type == "SHARDED_STATE_DICT":
        trainer.add_callback(FullStateDictAtEnd(trainer.accelerator.state.fsdp_plugin))
    if trainer.args.should_save:
        note = one_process_note(
            SECTION, trainer.args.world_size, torch.cuda.device_count(), settings.offload_params
        )
        if note is not None:
            say(note)
