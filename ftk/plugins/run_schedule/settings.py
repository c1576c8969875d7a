"""The run-schedule keys (axolotl's names) and what they ask of a run, read from a config.

The saves and evaluations of a run come from either ftk's core keys (``save_steps``,
``eval_steps``) or this plugin's (``saves_per_epoch``, ``evals_per_epoch``, ``save_strategy``,
``eval_strategy``); :func:`save_plan` and :func:`eval_plan` turn them into one :class:`Plan` each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from ftk.core.config.schema import StrictModel

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig

SECTION = "run_schedule"


class RunScheduleSettings(StrictModel):
    """Top-level keys: when to save and evaluate, when to stop early, and TrainingArguments extras."""

    saves_per_epoch: NonNegativeInt | None = Field(
        None,
        json_schema_extra={"schedules_checkpoints": True},
        description="Save a checkpoint N times per epoch, evenly spread over it (the last at its end; "
        "0: none). Not with save_steps.",
    )
    evals_per_epoch: NonNegativeInt | None = Field(
        None,
        json_schema_extra={"schedules_checkpoints": True},
        description="Evaluate N times per epoch, evenly spread over it (0: no evaluation during training). "
        "Not with eval_steps.",
    )
    save_strategy: Literal["steps", "epoch", "no", "best"] | None = Field(
        None,
        json_schema_extra={"schedules_checkpoints": True},
        description="steps: every save_steps; epoch: at the end of each epoch (saves_per_epoch: 1); "
        "no: no checkpoints; best: after each evaluation that improves eval_loss.",
    )
    eval_strategy: Literal["steps", "epoch", "no"] | None = Field(
        None,
        json_schema_extra={"schedules_checkpoints": True},
        description="steps: every eval_steps; epoch: at the end of each epoch (evals_per_epoch: 1); "
        "no: no evaluation during training.",
    )
    evaluation_strategy: Literal["steps", "epoch", "no"] | None = Field(
        None,
        json_schema_extra={"schedules_checkpoints": True},
        description="transformers' former name of eval_strategy (the same values).",
    )
    save_only_model: bool = Field(
        False,
        description="Checkpoints hold the model only (no optimizer, schedule or RNG state): smaller, "
        "but a run cannot be resumed from them.",
    )
    early_stopping_patience: PositiveInt | None = Field(
        None,
        description="Stop training after N evaluations in a row without a lower eval_loss "
        "(needs eval data and evaluations during training).",
    )
    loss_watchdog_threshold: float | None = Field(
        None,
        description="Stop the run (exit code 1, final model not saved) when the logged training loss stays "
        "above this for loss_watchdog_patience logged steps in a row.",
    )
    loss_watchdog_patience: PositiveInt | None = Field(
        None,
        description="Logged steps in a row above loss_watchdog_threshold before the run stops (default 3).",
    )
    group_by_length: bool = Field(
        False,
        description="Batch rows of similar length together (less padding; transformers' length-grouped "
        "sampler). Not with sample_packing.",
    )
    ddp_find_unused_parameters: bool | None = Field(
        None,
        description="DistributedDataParallel looks for parameters without gradients each step (needed by "
        "models that skip some); None: transformers' choice.",
    )
    torch_compile: bool = Field(False, description="Compile the model with torch.compile.")
    torch_compile_backend: str | None = Field(
        None, description="torch.compile backend (default: inductor); needs torch_compile: true."
    )
    torch_compile_mode: (
        Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None
    ) = Field(None, description="torch.compile mode; needs torch_compile: true.")
    gradient_checkpointing_kwargs: dict[str, Any] | None = Field(
        None,
        description="Keyword arguments of torch.utils.checkpoint.checkpoint for gradient checkpointing "
        "(e.g. use_reentrant: false); needs gradient_checkpointing: true.",
    )
    activation_offloading: bool | Literal["legacy"] = Field(
        False,
        description="Hold the activations that gradient checkpointing keeps in pinned CPU memory instead of "
        "on the GPU (true and legacy alike: copied on the compute stream); needs gradient_checkpointing: true "
        "and a CUDA GPU.",
    )


def settings(cfg: FtkConfig) -> RunScheduleSettings:
    """This plugin's keys of ``cfg`` (their defaults for a config built without this plugin's keys)."""
    own = cfg.section(SECTION)
    return own if isinstance(own, RunScheduleSettings) else RunScheduleSettings.model_validate({})


def expects_eval(cfg: FtkConfig) -> bool:
    """Whether the run has eval data: a held-out share (``val_set_size``) or ``test_datasets``."""
    return bool(cfg.val_set_size or cfg.test_datasets)


@dataclass(frozen=True)
class Plan:
    """When a run saves or evaluates: every ``every`` steps, ``per_epoch`` times per epoch, after an
    improving evaluation (``best``), or never (``none``).  ``key`` names the key that asked for it."""

    kind: Literal["steps", "per_epoch", "best", "none"]
    key: str
    every: int = 0
    per_epoch: int = 0

    @property
    def active(self) -> bool:
        """Whether anything is saved or evaluated during training."""
        return self.kind != "none"


def eval_strategy(cfg: FtkConfig) -> tuple[str, str | None]:
    """The key that sets the eval strategy (``eval_strategy`` or its former name) and its value."""
    own = settings(cfg)
    if own.evaluation_strategy is not None and own.eval_strategy is None:
        return "evaluation_strategy", own.evaluation_strategy
    return "eval_strategy", own.eval_strategy


def save_plan(cfg: FtkConfig) -> Plan | None:
    """The checkpoints ``cfg`` asks for; None when only the core's ``save_steps`` (or nothing) decides."""
    own = settings(cfg)
    if own.saves_per_epoch is not None:
        if own.saves_per_epoch == 0:
            return Plan("none", "saves_per_epoch")
        return Plan("per_epoch", "saves_per_epoch", per_epoch=own.saves_per_epoch)
    strategy = own.save_strategy
    if strategy is None:
        return None
    if strategy == "steps":
        return Plan("steps", "save_strategy", every=cfg.save_steps or 0)
    if strategy == "epoch":
        return Plan("per_epoch", "save_strategy", per_epoch=1)
    if strategy == "best":
        return Plan("best", "save_strategy")
    return Plan("none", "save_strategy")


def eval_plan(cfg: FtkConfig) -> Plan | None:
    """The evaluations during training ``cfg`` asks for; None when only the core's ``eval_steps`` decides."""
    own = settings(cfg)
    if own.evals_per_epoch is not None:
        if own.evals_per_epoch == 0:
            return Plan("none", "evals_per_epoch")
        return Plan("per_epoch", "evals_per_epoch", per_epoch=own.evals_per_epoch)
    key, strategy = eval_strategy(cfg)
    if strategy is None:
        return None
    if strategy == "steps":
        return Plan("steps", key, every=cfg.eval_steps or 0)
    if strategy == "epoch":
        return Plan("per_epoch", key, per_epoch=1)
    return Plan("none", key)


def evaluates_during_training(cfg: FtkConfig) -> bool:
    """Whether ``cfg`` schedules evaluations during training (with or without eval data)."""
    plan = eval_plan(cfg)
    return plan.active if plan is not None else bool(cfg.eval_steps)


def watchdog_settings(cfg: FtkConfig) -> tuple[float, int] | None:
    """``(threshold, patience)`` of the loss watchdog, or None when it is off."""
    own = settings(cfg)
    if own.loss_watchdog_threshold is None:
        return None
    return own.loss_watchdog_threshold, own.loss_watchdog_patience or 3
