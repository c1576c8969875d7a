"""Built-in plugin: optimizers and learning-rate schedules, by transformers' and axolotl's names.

Optimizers: ftk builds ``adamw_torch``, ``adamw_torch_fused``, ``adamw_bnb_8bit``, ``sgd`` and
``adafactor`` itself (``builtin.py``); every other name of transformers' ``OptimizerNames`` is
built by transformers over ftk's parameter groups (``hf_optimizers.py``); axolotl's own names stop
with what to use instead.  Schedules: ftk's ``cosine``, ``linear``, ``constant`` and transformers'
others (``schedules.py``).  What each needs is in ``docs/training.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field

from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.hookspecs import hookimpl
from ftk.core.lifecycle import TRAINING
from ftk.plugins.optimizers.builtin import (
    OPTIMIZERS,
    SECTION,
    SGD_MOMENTUM,
    bnb_adamw_8bit,
    fused_adamw,
    fused_adamw_problem,
    import_bnb_optim,
    import_optional,
    note,
)
from ftk.plugins.optimizers.hf_optimizers import (
    AXOLOTL_ONLY,
    LOW_RANK,
    SCHEDULE_FREE,
    TRANSFORMERS_OPTIMIZERS,
    axolotl_only_message,
    machine_check,
    optim_args_problem,
    parse_optim_args,
    transformers_build,
    unavailable,
)
from ftk.plugins.optimizers.schedules import (
    SCHEDULES,
    TRANSFORMERS_SCHEDULES,
    lambda_schedule,
    lr_multiplier,
    schedule,
    schedule_problems,
    transformers_schedule,
)

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from ftk.core.registry import Register

__all__ = [
    "OPTIMIZERS",
    "SGD_MOMENTUM",
    "OptimizerSettings",
    "bnb_adamw_8bit",
    "fused_adamw",
    "fused_adamw_problem",
    "import_bnb_optim",
    "import_optional",
    "lr_multiplier",
    "schedule",
]


def _well_formed(value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    parse_optim_args(value)  # raises ValueError on a malformed string
    return value


Scalar = str | int | float | bool


class OptimizerSettings(StrictModel):
    """Top-level keys of the optimizers and schedules."""

    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0.0, description="AdamW epsilon.")
    min_lr_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="The schedule decays to this share of learning_rate: cosine, linear, "
        "cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay, polynomial (lr_end).",
    )
    cosine_constant_lr_ratio: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="cosine and linear: the decay reaches min_lr_ratio at this share of the run and "
        "stays there (0: unset, as in axolotl).",
    )
    lr_quadratic_warmup: bool = Field(
        False, description="cosine, linear, constant: the warmup rises as the square of the linear one."
    )
    lr_scheduler_kwargs: dict[str, Any] | None = Field(
        None,
        description="Keyword arguments of transformers' schedules (e.g. num_cycles, power, "
        "num_decay_steps); not for ftk's cosine, linear, constant.",
    )
    optim_args: Annotated[str | dict[str, Scalar] | None, AfterValidator(_well_formed)] = Field(
        None,
        description="Arguments of optimizers built by transformers, as 'key=value,key=value' or a "
        "mapping (e.g. rank for galore_adamw); each optimizer reads its own keys.",
    )
    optim_target_modules: list[str] | Literal["all_linear", "all-linear"] | None = Field(
        None,
        description="galore_* and apollo_* optimizers: the linear modules (names or regexes) whose "
        "gradients are projected, or all_linear.",
    )


# --- hooks --------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level ``adam_*``, ``min_lr_ratio``, ``lr_scheduler_kwargs``, ``optim_*``... keys."""
    register(SECTION, OptimizerSettings, flat=True)


@hookimpl
def register_optimizers(register: Register) -> None:
    """Offer ftk's optimizers, transformers' other names, and axolotl's (which stop with advice)."""
    for name, build in OPTIMIZERS.items():
        register(name, build)
    for name in TRANSFORMERS_OPTIMIZERS:
        register(name, transformers_build(name))
    for name in AXOLOTL_ONLY:
        register(name, unavailable(name))


@hookimpl
def register_schedulers(register: Register) -> None:
    """Offer ``cosine``, ``linear``, ``constant`` and transformers' other schedules."""
    for shape in SCHEDULES:
        register(shape, lambda_schedule(shape))
    for name in TRANSFORMERS_SCHEDULES:
        register(name, transformers_schedule(name))


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Optimizer and schedule keys that do not fit the chosen ``optimizer`` and ``lr_scheduler``."""
    return optimizer_problems(cfg) + schedule_problems(cfg)


def optimizer_problems(cfg: FtkConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """``optimizer`` against ``optim_args``, ``optim_target_modules`` and the schedule, as (key path, message)."""
    settings = cfg.section(SECTION)
    name = cfg.optimizer
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if name in AXOLOTL_ONLY:
        return [(("optimizer",), axolotl_only_message(name))]
    if name not in OPTIMIZERS and name not in TRANSFORMERS_OPTIMIZERS:
        return problems  # another plugin's optimizer
    problem = optim_args_problem(name, settings.optim_args)
    if problem is not None:
        problems.append((("optim_args",), problem))
    if name in LOW_RANK and not settings.optim_target_modules:
        problems.append(
            (("optim_target_modules",), f"optimizer {name} needs optim_target_modules (or all_linear)")
        )
    if settings.optim_target_modules and name not in LOW_RANK:
        problems.append((("optim_target_modules",), "applies to galore_* and apollo_* optimizers only"))
    if name.endswith("_layerwise"):
        problems.append(
            (
                ("optimizer",),
                f"{name} updates each weight inside the backward pass, before ftk clips the gradients "
                f"and checks their norm: not supported; use {name.removesuffix('_layerwise')}",
            )
        )
    if name in SCHEDULE_FREE:
        if cfg.lr_scheduler != "constant":
            problems.append((("lr_scheduler",), f"{name} replaces the schedule: set lr_scheduler: constant"))
        if cfg.warmup_ratio is not None and name != "schedule_free_radam":
            problems.append((("warmup_ratio",), f"{name} warms up by itself: give warmup_steps instead"))
    return problems


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Before any data work: the optimizer's package is there and one step of it runs on this machine."""
    if purpose not in TRAINING:
        return
    name = cfg.optimizer
    if name == "adamw_bnb_8bit":
        import_bnb_optim()
        message = machine_check(name, cfg, build=bnb_adamw_8bit)
    elif name in TRANSFORMERS_OPTIMIZERS:
        message = machine_check(name, cfg)
    else:
        return
    if message is not None:
        note(message)


@hookimpl
def training_arguments(cfg: FtkConfig) -> dict[str, Any]:
    """``optim`` for a transformers optimizer: Trainer's training step reads it (LOMO's fused backward)."""
    if cfg.optimizer in TRANSFORMERS_OPTIMIZERS:
        return {"optim": cfg.optimizer}
    return {}


@hookimpl
def trainer_callbacks(cfg: FtkConfig) -> list[TrainerCallback]:
    """A schedule-free optimizer's averaged weights for evaluation, checkpoints and the saved model."""
    if cfg.optimizer not in SCHEDULE_FREE:
        return []
    from ftk.plugins.optimizers.schedule_free import ScheduleFreeModes

    return [ScheduleFreeModes()]
