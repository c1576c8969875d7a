"""What the run-schedule keys cannot do together, or with the rest of the config: (key path, message)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftk.plugins.run_schedule.settings import (
    Plan,
    eval_plan,
    evaluates_during_training,
    expects_eval,
    save_plan,
)
from ftk.plugins.run_schedule.settings import settings as own_settings

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig

Problem = tuple[tuple[str | int, ...], str]

NO_EVAL_DATA = "needs eval data: set val_set_size or test_datasets"
NO_EVALUATIONS = "needs evaluations during training: set eval_steps or evals_per_epoch"


def key_problems(cfg: FtkConfig) -> list[Problem]:
    """Every problem of this plugin's keys in ``cfg``."""
    return [
        *_save_problems(cfg),
        *_eval_problems(cfg),
        *_best_model_problems(cfg),
        *_stopping_problems(cfg),
        *_argument_problems(cfg),
    ]


def _save_problems(cfg: FtkConfig) -> list[Problem]:
    own = own_settings(cfg)
    problems: list[Problem] = []
    if own.saves_per_epoch is not None and cfg.save_steps is not None:
        problems.append((("saves_per_epoch",), "and save_steps are both set; choose one"))
    strategy = own.save_strategy
    if strategy is None:
        return problems
    if own.saves_per_epoch is not None:
        problems.append((("save_strategy",), "and saves_per_epoch are both set; choose one"))
    elif strategy == "steps" and cfg.save_steps is None:
        problems.append((("save_strategy",), "is steps but save_steps is not set"))
    elif strategy != "steps" and cfg.save_steps is not None:
        problems.append((("save_strategy",), f"is {strategy} but save_steps is set; choose one"))
    if strategy == "best":
        if not expects_eval(cfg):
            problems.append((("save_strategy",), f"best {NO_EVAL_DATA}"))
        elif not evaluates_during_training(cfg):
            problems.append((("save_strategy",), f"best {NO_EVALUATIONS}"))
    return problems


def _eval_problems(cfg: FtkConfig) -> list[Problem]:
    own = own_settings(cfg)
    problems: list[Problem] = []
    if own.evals_per_epoch is not None and cfg.eval_steps is not None:
        problems.append((("evals_per_epoch",), "and eval_steps are both set; choose one"))
    if own.eval_strategy is not None and own.evaluation_strategy is not None:
        problems.append(
            (
                ("evaluation_strategy",),
                "is eval_strategy's former name and eval_strategy is set too; keep one",
            )
        )
        return problems
    key = "eval_strategy" if own.eval_strategy is not None else "evaluation_strategy"
    strategy = own.eval_strategy or own.evaluation_strategy
    if strategy is None:
        return problems
    if own.evals_per_epoch is not None:
        problems.append(((key,), "and evals_per_epoch are both set; choose one"))
    elif strategy == "steps" and cfg.eval_steps is None:
        problems.append(((key,), "is steps but eval_steps is not set"))
    elif strategy != "steps" and cfg.eval_steps is not None:
        problems.append(((key,), f"is {strategy} but eval_steps is set; choose one"))
    return problems


def _core_plan(every: int | None, key: str) -> Plan | None:
    return Plan("steps", key, every=every) if every else None


def _best_model_problems(cfg: FtkConfig) -> list[Problem]:
    """``load_best_model_at_end`` with this plugin's schedule keys (the core checks save_steps/eval_steps)."""
    if not cfg.load_best_model_at_end:
        return []
    saves = save_plan(cfg)
    evals = eval_plan(cfg)
    if saves is None and evals is None:
        return []  # the core's own check
    saves = saves or _core_plan(cfg.save_steps, "save_steps")
    evals = evals or _core_plan(cfg.eval_steps, "eval_steps")
    key = ("load_best_model_at_end",)
    if saves is None or not saves.active:
        return [(key, "needs checkpoints to choose from: set save_steps or saves_per_epoch")]
    if evals is None or not evals.active:
        return [(key, NO_EVALUATIONS)]
    if saves.kind == "best" or (saves.kind, evals.kind) == ("steps", "steps"):
        return []  # save_strategy best saves after evaluations; steps with steps: the core's check
    if (saves.kind, evals.kind) == ("per_epoch", "per_epoch"):
        if evals.per_epoch % saves.per_epoch:
            return [
                (
                    (evals.key,),
                    f"({evals.per_epoch} per epoch) must be a multiple of {saves.key} ({saves.per_epoch}) when "
                    "load_best_model_at_end is on: every checkpoint must follow an evaluation",
                )
            ]
        return []
    return [
        (
            key,
            f"needs every checkpoint to follow an evaluation; saves set by {saves.key} and evaluations by "
            f"{evals.key} do not line up: use saves_per_epoch with evals_per_epoch, or save_steps with eval_steps",
        )
    ]


def _stopping_problems(cfg: FtkConfig) -> list[Problem]:
    own = own_settings(cfg)
    problems: list[Problem] = []
    if own.early_stopping_patience is not None:
        if not expects_eval(cfg):
            problems.append((("early_stopping_patience",), NO_EVAL_DATA))
        elif not evaluates_during_training(cfg):
            problems.append((("early_stopping_patience",), NO_EVALUATIONS))
    if own.loss_watchdog_patience is not None and own.loss_watchdog_threshold is None:
        problems.append(
            (
                ("loss_watchdog_patience",),
                "set loss_watchdog_threshold to watch the loss (without it nothing is watched)",
            )
        )
    return problems


def _argument_problems(cfg: FtkConfig) -> list[Problem]:
    own = own_settings(cfg)
    problems: list[Problem] = []
    if own.group_by_length and cfg.sample_packing:
        problems.append(
            (
                ("group_by_length",),
                "and sample_packing are both on; packed rows all have sequence_len, choose one",
            )
        )
    for key in ("torch_compile_backend", "torch_compile_mode"):
        if getattr(own, key) is not None and not own.torch_compile:
            problems.append(((key,), "set torch_compile: true to compile (without it nothing is compiled)"))
    for key in ("gradient_checkpointing_kwargs", "activation_offloading"):
        if getattr(own, key) and not cfg.gradient_checkpointing:
            problems.append(((key,), "needs gradient_checkpointing: true"))
    return problems
