"""Built-in plugin: Fully Sharded Data Parallel (FSDP2 only) through transformers' Trainer and accelerate.

The ``fsdp:`` section (axolotl's ``fsdp_config:``, with or without the ``fsdp_`` prefix on its
keys, and ``fsdp_version: 2``) maps onto ``TrainingArguments(fsdp=True, fsdp_config={...})``.
FSDP runs on CUDA GPUs; with ``SHARDED_STATE_DICT`` checkpoints the final model is still saved
whole (``docs/scaling.md``).

axolotl's FSDP1 forms are converted before validation, the way accelerate converts an FSDP1 config
(``accelerate to-fsdp2``), each change with a note: the option list ``fsdp: [full_shard, auto_wrap]``,
``sharding_strategy`` (as ``reshard_after_forward``), ``fsdp_version: 1``, and the settings FSDP2
has no use for (dropped).  A setting whose meaning FSDP2 cannot keep (hybrid sharding, no
sharding, forward prefetch) is an error.
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

    from ftk.core.config.rewrite import ConfigRewrite
    from ftk.core.data.pipeline import PreparedData
    from ftk.core.registry import Register

SECTION = "fsdp"
#: axolotl's name for the same section.
AXOLOTL_SECTION = "fsdp_config"
VERSION_KEY = "fsdp_version"
SUPPORTED_VERSION = 2

#: axolotl's ``fsdp:`` option list (transformers' FSDPOption): the FSDP2 setting each means.
FSDP1_OPTIONS: dict[str, tuple[str, bool] | None] = {
    "full_shard": ("reshard_after_forward", True),
    "shard_grad_op": ("reshard_after_forward", False),
    "offload": ("offload_params", True),
    "auto_wrap": None,  # what to wrap is auto_wrap_policy's (each transformer layer by default)
}
#: FSDP1 sharding strategies and the ``reshard_after_forward`` that means the same under FSDP2.
SHARDING_STRATEGIES = {"FULL_SHARD": True, "SHARD_GRAD_OP": False}
#: FSDP1 strategies whose meaning FSDP2 over ftk's one-dimensional device mesh cannot keep.
UNKEPT_STRATEGIES = {
    "HYBRID_SHARD": "it shards within a node and replicates across nodes, which needs a 2-D device mesh "
    "ftk does not build; use FULL_SHARD",
    "HYBRID_SHARD_ZERO2": "it shards within a node and replicates across nodes, which needs a 2-D device mesh "
    "ftk does not build; use SHARD_GRAD_OP",
    "NO_SHARD": "it does not shard at all; that is DDP: remove the FSDP settings and train with --nproc-per-node",
}
#: FSDP1 settings that have no effect under FSDP2 (accelerate drops them too), and why.
NO_EFFECT = {
    "limit_all_gathers": "FSDP2 needs no all-gather rate limiter",
    "use_orig_params": "FSDP2 always shards the original parameters",
    "sync_module_states": "every process loads the same checkpoint and FSDP2 keeps its shard of it",
    "backward_prefetch": "FSDP2 prefetches in backward by itself",
    "forward_prefetch": "FSDP2 does not prefetch in forward",
}

#: The keys of FSDP1 sections that FSDP2 has not (converted, dropped, or errors).
FSDP1_KEYS = frozenset({"sharding_strategy", *NO_EFFECT})

#: The note for ``fsdp_version: 1``, which is converted to 2.
VERSION_NOTE = "ftk runs FSDP2 (FSDP1 is deprecated in transformers); the FSDP1 settings are converted"

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
        description="Shard rank 0's weights to every process (the others drop their copy first, "
        "saving host memory); no effect on a 4-bit model.",
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


def section_name(cfg: FtkConfig) -> str:
    """The name the config gives its FSDP section: ``fsdp`` or axolotl's ``fsdp_config``."""
    return SECTION if cfg.section(SECTION) is not None else AXOLOTL_SECTION


def quantized_4bit(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds bitsandbytes 4-bit weights, which accelerate loads in every process."""
    return any(type(parameter).__name__ == "Params4bit" for parameter in model.parameters())


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
    section = section_name(cfg)
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


# --- axolotl's FSDP1 forms, converted to FSDP2 before validation ------------------------------


def _yaml(value: Any) -> str:
    """``value`` as it would be written in YAML (true, false, a name)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _find(section: dict[str, Any], setting: str) -> str | None:
    """The key that sets ``setting`` in a raw section (with or without the ``fsdp_`` prefix; null is
    not set), or None."""
    return next((key for key in (setting, f"fsdp_{setting}") if section.get(key) is not None), None)


def _convert_strategy(rewrite: ConfigRewrite, name: str, key: str) -> None:
    """``sharding_strategy`` as FSDP2's ``reshard_after_forward`` (accelerate's mapping)."""
    section = rewrite.container((name,))
    loc = (name, key)
    strategy = str(section[key]).upper()
    if strategy not in SHARDING_STRATEGIES:
        why = UNKEPT_STRATEGIES.get(strategy)
        if why is not None:
            message = f"{strategy} cannot be kept under FSDP2: {why}"
        else:
            choices = [*SHARDING_STRATEGIES, *UNKEPT_STRATEGIES]
            message = f"unknown sharding strategy {section[key]!r}{suggest(strategy, choices)}; FULL_SHARD or SHARD_GRAD_OP"
        rewrite.problem(loc, message)
        rewrite.drop(loc)
        return
    reshard = SHARDING_STRATEGIES[strategy]
    existing = _find(section, "reshard_after_forward")
    if existing is None:
        rewrite.rename(
            loc,
            "reshard_after_forward",
            value=reshard,
            note=f"FSDP2's spelling of {key}: {strategy} (FSDP1)",
        )
    elif section[existing] is not reshard:
        rewrite.problem(
            loc,
            f"{strategy} means reshard_after_forward: {_yaml(reshard)} under FSDP2, but {existing} is "
            f"{_yaml(section[existing])}; keep one of them",
        )
        rewrite.drop(loc)
    else:
        rewrite.drop(loc, note=f"dropped: {existing}: {_yaml(reshard)} says {strategy} in FSDP2 terms")


def _convert_section(rewrite: ConfigRewrite, name: str) -> None:
    """The FSDP1 keys of the raw section ``name``: converted, dropped with one note, or problems."""
    section = rewrite.container((name,))
    dropped: list[str] = []
    for key in list(section):
        setting = str(key).removeprefix("fsdp_")
        value = section[key]
        loc = (name, key)
        if value is None:  # not set: an FSDP1 key goes (the schema would not know it), others stay
            if setting in FSDP1_KEYS:
                rewrite.drop(loc)
            continue
        if setting == "sharding_strategy":
            _convert_strategy(rewrite, name, key)
        elif setting == "forward_prefetch" and value:
            rewrite.problem(loc, "FSDP2 has no forward prefetch (accelerate refuses it); set it to false")
            rewrite.drop(loc)
        elif setting in NO_EFFECT:
            dropped.append(key)
            rewrite.drop(loc)
        elif setting == "version" and type(value) is int and value == 1:
            rewrite.set(loc, SUPPORTED_VERSION, note=VERSION_NOTE)
    if dropped:
        reasons = "; ".join(NO_EFFECT[key.removeprefix("fsdp_")] for key in dropped)
        rewrite.note(
            (name, dropped[0]),
            f"{', '.join(dropped)}: no effect under FSDP2, dropped as accelerate drops them: {reasons}",
        )


def _convert_options(rewrite: ConfigRewrite, options: list[Any] | str) -> None:
    """axolotl's ``fsdp: [full_shard, auto_wrap]`` as keys of its ``fsdp_config`` (or of ``fsdp`` itself)."""
    items = options.split() if isinstance(options, str) else list(options)
    if not items:  # as in axolotl, an empty list turns nothing on
        rewrite.drop((SECTION,), note="no FSDP options: dropped")
        return
    settings: dict[str, bool] = {}
    meanings: list[str] = []
    for index, item in enumerate(items):
        loc = (SECTION,) if isinstance(options, str) else (SECTION, index)
        option = str(item).strip().lower()
        if option in FSDP1_OPTIONS:
            meaning = FSDP1_OPTIONS[option]
            if meaning is None:
                meanings.append(f"{option} is auto_wrap_policy's (each transformer layer by default)")
            elif settings.get(meaning[0], meaning[1]) is not meaning[1]:
                rewrite.problem(loc, f"{option} contradicts an earlier option; keep one of them")
            else:
                settings[meaning[0]] = meaning[1]
                meanings.append(f"{option} is {meaning[0]}: {_yaml(meaning[1])}")
        elif option.upper() in UNKEPT_STRATEGIES:
            rewrite.problem(loc, f"{option} cannot be kept under FSDP2: {UNKEPT_STRATEGIES[option.upper()]}")
        else:
            rewrite.problem(
                loc,
                f"unknown FSDP option {item!r}{suggest(option, list(FSDP1_OPTIONS))}; {', '.join(FSDP1_OPTIONS)}",
            )
    data = rewrite.data
    if isinstance(data.get(AXOLOTL_SECTION), dict):
        section = data[AXOLOTL_SECTION]
        for key, value in settings.items():
            existing = _find(section, key)
            if existing is None:
                rewrite.set((AXOLOTL_SECTION, key), value, line_of=(SECTION,))
            elif section[existing] is not value:
                rewrite.problem(
                    (SECTION,),
                    f"means {key}: {_yaml(value)} but {AXOLOTL_SECTION}.{existing} is "
                    f"{_yaml(section[existing])}; keep one of them",
                )
        rewrite.drop((SECTION,))
    else:
        rewrite.set((SECTION,), settings)
    if meanings:
        rewrite.note((SECTION,), f"FSDP1 options, in FSDP2 terms: {'; '.join(meanings)}")


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
def rewrite_config(rewrite: ConfigRewrite) -> None:
    """axolotl's FSDP1 forms in FSDP2 terms, as accelerate converts them (see the module docstring)."""
    data = rewrite.data
    for name in (SECTION, AXOLOTL_SECTION):
        if isinstance(data.get(name), dict):
            _convert_section(rewrite, name)
    options = data.get(SECTION)
    if isinstance(options, list | str):
        _convert_options(rewrite, options)
    version = data.get(VERSION_KEY)
    if type(version) is int and version == 1:
        rewrite.set((VERSION_KEY,), SUPPORTED_VERSION, note=VERSION_NOTE)


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
        if settings.cpu_ram_efficient_loading and quantized_4bit(model):
            say(
                f"note: {section_name(cfg)}.cpu_ram_efficient_loading: no effect on a 4-bit model "
                "(accelerate shards every process's own copy of it)"
            )
        note = one_process_note(
            SECTION, trainer.args.world_size, torch.cuda.device_count(), settings.offload_params
        )
        if note is not None:
            say(note)
