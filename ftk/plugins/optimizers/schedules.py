"""Learning-rate schedules: ftk's ``cosine``, ``linear``, ``constant``, and every other name of transformers' ``SchedulerType``.

ftk's own warm up so that the first step already learns (step k of W runs at k/(W+1) of the peak;
``lr_quadratic_warmup`` squares that), then decay to ``min_lr_ratio`` of the peak, reached at the
end of the run or, with ``cosine_constant_lr_ratio``, at that share of it and kept after; the
formulas are in ``docs/training.md``.  The others are transformers' ``get_scheduler`` with ftk's
warmup steps and ``lr_scheduler_kwargs``; ``min_lr_ratio`` goes to those that decay to a floor.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ftk.core.config.schema import FtkConfig
from ftk.plugins.optimizers.builtin import SECTION, note

if TYPE_CHECKING:
    import torch

SCHEDULES = ("cosine", "linear", "constant")

#: Every other name of transformers' ``SchedulerType`` (test_optimizer_names.py checks the list).
TRANSFORMERS_SCHEDULES = (
    "cosine_with_restarts",
    "polynomial",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)
#: Schedules that step on the eval loss after each evaluation, and have no warmup.
ON_EVAL_LOSS = ("reduce_lr_on_plateau", "greedy")
#: Schedule -> the ``get_scheduler`` keyword ``min_lr_ratio`` becomes (a share of the peak).
MIN_LR_KEYWORD = {
    "cosine_with_min_lr": "min_lr_rate",
    "cosine_warmup_with_min_lr": "min_lr_rate",
    "warmup_stable_decay": "min_lr_ratio",
}
#: Arguments ``get_scheduler`` fills itself.
_FILLED = {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch", "self"}


# --- ftk's own ------------------------------------------------------------------------------


def lr_multiplier(
    step: int,
    shape: str,
    warmup: int,
    total: int,
    floor: float,
    quadratic: bool = False,
    decay_end: int | None = None,
) -> float:
    """The share of the peak learning rate that optimizer step ``step`` (counted from 0) runs at.

    Warmup: step ``s < W`` runs at ``(s + 1) / (W + 1)`` (squared when ``quadratic``), so no step is
    spent at 0 and step ``W`` is the first at the peak, where the decay over
    ``p = (s - W) / (E - W)`` begins; ``E`` is ``decay_end`` (default: ``total``), after which the
    rate stays at ``floor`` (docs/training.md).
    """
    if step < warmup:
        share = (step + 1) / (warmup + 1)
        return share * share if quadratic else share
    if shape == "constant":
        return 1.0
    end = total if decay_end is None else decay_end
    progress = min(1.0, (step - warmup) / max(1, end - warmup))
    decay = 1.0 - progress if shape == "linear" else (1.0 + math.cos(math.pi * progress)) / 2
    return floor + (1.0 - floor) * decay


def schedule(
    shape: str, warmup: int, total: int, floor: float, quadratic: bool = False, decay_end: int | None = None
) -> Callable[[int], float]:
    """``lr_multiplier`` as a one-argument function of the step, for ``LambdaLR``.

    A plain function on purpose: ``LambdaLR`` does not save it in checkpoints, so a resumed run
    rebuilds it from its config.
    """

    def multiplier(step: int) -> float:
        return lr_multiplier(step, shape, warmup, total, floor, quadratic, decay_end)

    return multiplier


def decay_end(cfg: FtkConfig, total: int) -> int | None:
    """The step where the decay reaches ``min_lr_ratio``: ``floor(total * cosine_constant_lr_ratio)``, or None.

    0 means unset, as in axolotl (the decay then lasts the whole run).
    """
    ratio = cfg.section(SECTION).cosine_constant_lr_ratio
    return math.floor(round(total * ratio, 9)) if ratio else None


def lambda_schedule(
    shape: str,
) -> Callable[[FtkConfig, torch.optim.Optimizer, int, int], torch.optim.lr_scheduler.LRScheduler]:
    """The registered build function of the schedule ``shape`` (a LambdaLR over :func:`lr_multiplier`)."""

    def build(
        cfg: FtkConfig, optimizer: torch.optim.Optimizer, num_training_steps: int, num_warmup_steps: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        import torch

        settings = cfg.section(SECTION)
        floor = settings.min_lr_ratio
        if shape == "constant" and floor > 0:
            note("min_lr_ratio does not apply to lr_scheduler: constant; ignored")
        if optimizer_warms_up(cfg):
            num_warmup_steps = 0  # a schedule-free optimizer warms up by itself (warmup_steps)
        if num_warmup_steps >= num_training_steps > 0:
            note(
                f"warmup ({num_warmup_steps} steps) is not shorter than the run ({num_training_steps} steps): "
                "the learning rate never reaches learning_rate"
            )
        multiplier = schedule(
            shape,
            num_warmup_steps,
            num_training_steps,
            floor,
            quadratic=settings.lr_quadratic_warmup,
            decay_end=decay_end(cfg, num_training_steps),
        )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)

    return build


def optimizer_warms_up(cfg: FtkConfig) -> bool:
    """Whether the optimizer does the warmup itself (transformers' schedule-free AdamW and SGD)."""
    return cfg.optimizer in ("schedule_free_adamw", "schedule_free_sgd")


# --- transformers' --------------------------------------------------------------------------


def scheduler_keywords(name: str) -> tuple[set[str], set[str]]:
    """The ``lr_scheduler_kwargs`` keys transformers passes on for schedule ``name``: (all, required)."""
    import torch
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, GreedyLR
    from transformers.trainer_utils import SchedulerType

    if name == "constant_with_warmup":
        return set(), set()  # get_scheduler passes it the warmup only
    target: Any = {
        "reduce_lr_on_plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
        "greedy": GreedyLR,
    }.get(name) or TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
    parameters = [
        p
        for p in inspect.signature(target).parameters.values()
        if p.name not in _FILLED and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    required = {p.name for p in parameters if p.default is p.empty}
    if name == "warmup_stable_decay":
        required.discard("num_training_steps")
    return {p.name for p in parameters}, required


def scheduler_kwargs(cfg: FtkConfig, name: str) -> dict[str, Any]:
    """``lr_scheduler_kwargs`` with ``min_lr_ratio`` added where schedule ``name`` decays to a floor."""
    settings = cfg.section(SECTION)
    kwargs = dict(settings.lr_scheduler_kwargs or {})
    if name in MIN_LR_KEYWORD and "min_lr" not in kwargs:
        kwargs.setdefault(MIN_LR_KEYWORD[name], settings.min_lr_ratio)
    if name == "polynomial" and settings.min_lr_ratio > 0:
        kwargs.setdefault("lr_end", cfg.learning_rate * settings.min_lr_ratio)
    return kwargs


def transformers_schedule(
    name: str,
) -> Callable[[FtkConfig, torch.optim.Optimizer, int, int], Any]:
    """The registered build function of transformers' schedule ``name`` (``get_scheduler``)."""

    def build(
        cfg: FtkConfig, optimizer: torch.optim.Optimizer, num_training_steps: int, num_warmup_steps: int
    ) -> Any:
        from transformers import get_scheduler

        return get_scheduler(
            name,
            optimizer=optimizer,
            num_warmup_steps=num_warmup_steps,
            num_training_steps=num_training_steps,
            scheduler_specific_kwargs=scheduler_kwargs(cfg, name),
        )

    return build


def schedule_problems(cfg: FtkConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Keys of the schedule that do not apply to the chosen ``lr_scheduler``, as (key path, message)."""
    settings = cfg.section(SECTION)
    name = cfg.lr_scheduler
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if name in SCHEDULES:
        if settings.lr_scheduler_kwargs:
            problems.append(
                (
                    ("lr_scheduler_kwargs",),
                    f"lr_scheduler {name} is ftk's own and takes no lr_scheduler_kwargs",
                )
            )
        if settings.cosine_constant_lr_ratio and name == "constant":
            problems.append(
                (("cosine_constant_lr_ratio",), "applies to lr_scheduler cosine and linear, not constant")
            )
        return problems
    if name not in TRANSFORMERS_SCHEDULES:
        return problems  # another plugin's schedule: its keys are its own business
    for key in ("cosine_constant_lr_ratio", "lr_quadratic_warmup"):
        if getattr(settings, key):
            problems.append(((key,), f"applies to lr_scheduler cosine and linear (ftk's own), not {name}"))
    if settings.min_lr_ratio > 0 and name not in MIN_LR_KEYWORD and name != "polynomial":
        problems.append((("min_lr_ratio",), f"lr_scheduler {name} has no floor to set; remove min_lr_ratio"))
    given = dict(settings.lr_scheduler_kwargs or {})
    accepted, required = scheduler_keywords(name)
    unknown = sorted(set(given) - accepted)
    if unknown:
        offered = ", ".join(sorted(accepted)) or "none"
        problems.append(
            (
                ("lr_scheduler_kwargs",),
                f"lr_scheduler {name} does not take {', '.join(unknown)} (it takes: {offered})",
            )
        )
    missing = sorted(required - set(given) - set(scheduler_kwargs(cfg, name)))
    if missing:
        problems.append((("lr_scheduler_kwargs",), f"lr_scheduler {name} needs {', '.join(missing)}"))
    if name in MIN_LR_KEYWORD and settings.min_lr_ratio > 0 and {"min_lr", MIN_LR_KEYWORD[name]} & set(given):
        problems.append(
            (("min_lr_ratio",), "set either min_lr_ratio or the floor in lr_scheduler_kwargs, not both")
        )
    if name in ON_EVAL_LOSS:
        if cfg.warmup_steps or cfg.warmup_ratio:
            key = "warmup_steps" if cfg.warmup_steps else "warmup_ratio"
            problems.append(((key,), f"lr_scheduler {name} has no warmup"))
        if not (cfg.val_set_size or cfg.test_datasets) or not cfg.eval_steps:
            problems.append(
                (
                    ("lr_scheduler",),
                    f"{name} changes the learning rate on the eval loss: it needs an eval set "
                    "(val_set_size or test_datasets) and eval_steps",
                )
            )
    return problems
