"""Built-in plugin: when a run saves, evaluates and stops, and a few more TrainingArguments (axolotl's keys).

* ``saves_per_epoch`` / ``evals_per_epoch`` and ``save_strategy`` / ``eval_strategy``: checkpoints
  and evaluations N times per epoch (a callback, :mod:`.callbacks`), at each epoch's end, after an
  improving evaluation, or never.
* ``early_stopping_patience`` (transformers' callback) and ``loss_watchdog_threshold`` /
  ``loss_watchdog_patience`` (stops through the run guard: exit code 1, nothing saved).
* ``save_only_model``, ``group_by_length``, ``ddp_find_unused_parameters``, ``torch_compile*``,
  ``gradient_checkpointing_kwargs``, ``activation_offloading``: TrainingArguments fields.
* ``batch_size`` (micro_batch_size x gradient_accumulation_steps), ``warmup_steps`` below 1 (a
  share of the steps) and ``gradient_checkpointing: offload`` are rewritten before validation into
  ``gradient_accumulation_steps``, ``warmup_ratio`` and ``activation_offloading: true``.

``docs/training.md`` ("Checkpoints, evaluation and stopping early") says what each does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftk.core.errors import FtkError, say
from ftk.core.hookspecs import hookimpl
from ftk.core.lifecycle import TRAINING
from ftk.plugins.run_schedule.callbacks import NEVER, PerEpochSchedule
from ftk.plugins.run_schedule.checks import key_problems
from ftk.plugins.run_schedule.rewrites import (
    rewrite_batch_size,
    rewrite_checkpointing_offload,
    rewrite_warmup_share,
)
from ftk.plugins.run_schedule.settings import (
    SECTION,
    Plan,
    RunScheduleSettings,
    eval_plan,
    eval_strategy,
    expects_eval,
    save_plan,
    settings,
    watchdog_settings,
)

if TYPE_CHECKING:
    from transformers import Trainer

    from ftk.core.callbacks import TrainerCallback
    from ftk.core.config.rewrite import ConfigRewrite
    from ftk.core.config.schema import FtkConfig
    from ftk.core.data.pipeline import PreparedData
    from ftk.core.registry import Register


# --- TrainingArguments --------------------------------------------------------------------------


def _strategy_fields(plan: Plan, what: str) -> dict[str, Any]:
    """``save_*`` or ``eval_*`` TrainingArguments for ``plan`` (``what``: "save" or "eval")."""
    if plan.kind == "steps":
        return {f"{what}_strategy": "steps", f"{what}_steps": plan.every}
    if plan.kind == "per_epoch":  # the callback decides; a "steps" strategy that never fires on its own
        return {f"{what}_strategy": "steps", f"{what}_steps": NEVER}
    if plan.kind == "best":
        return {f"{what}_strategy": "best"}
    return {f"{what}_strategy": "no"}


def _argument_name(*names: str) -> str:
    """The first of ``names`` that the installed TrainingArguments has (transformers renames fields)."""
    from transformers import TrainingArguments

    fields = {field.name for field in dataclasses.fields(TrainingArguments)}
    return next((name for name in names if name in fields), names[-1])


def training_fields(cfg: FtkConfig) -> dict[str, Any]:
    """The TrainingArguments fields this plugin's keys set (only those the config asks for)."""
    own = settings(cfg)
    fields: dict[str, Any] = {}
    saves = save_plan(cfg)
    if saves is not None:
        fields.update(_strategy_fields(saves, "save"))
    evals = eval_plan(cfg)
    if evals is not None and expects_eval(cfg):  # without eval data nothing is evaluated (a note says so)
        fields.update(_strategy_fields(evals, "eval"))
    if own.save_only_model:
        fields["save_only_model"] = True
    if own.group_by_length:
        name = _argument_name("train_sampling_strategy", "group_by_length")
        fields[name] = "group_by_length" if name == "train_sampling_strategy" else True
    if own.ddp_find_unused_parameters is not None:
        fields["ddp_find_unused_parameters"] = own.ddp_find_unused_parameters
    if own.torch_compile:
        fields["torch_compile"] = True
        if own.torch_compile_backend is not None:
            fields["torch_compile_backend"] = own.torch_compile_backend
        if own.torch_compile_mode is not None:
            fields["torch_compile_mode"] = own.torch_compile_mode
    if cfg.gradient_checkpointing and (own.gradient_checkpointing_kwargs or own.activation_offloading):
        kwargs = dict(own.gradient_checkpointing_kwargs or {})
        if own.activation_offloading:
            kwargs["offload"] = True
        fields[_argument_name("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs")] = kwargs
    return fields


# --- the machine and the checkpoint to resume ---------------------------------------------------


def model_only(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` was saved with ``save_only_model`` (Trainer then writes no RNG state)."""
    return checkpoint.is_dir() and not any(checkpoint.glob("rng_state*.pth"))


def checkpoint_asked_for(cfg: FtkConfig) -> tuple[str, Path] | None:
    """The checkpoint a run of ``cfg`` would resume from, with the key that asks for it, or None."""
    from ftk.core import checkpoints, run_dir

    if cfg.resume_from_checkpoint:
        return "resume_from_checkpoint", Path(cfg.resume_from_checkpoint)
    if not cfg.auto_resume or not Path(cfg.output_dir).is_dir():
        return None
    last_run = run_dir.last_lineage(cfg.output_dir)
    latest = (
        checkpoints.latest_checkpoint(cfg.output_dir, last_run) if last_run is not None else None
    ) or checkpoints.latest_checkpoint(cfg.output_dir)
    return ("auto_resume", latest) if latest is not None else None


def resume_problem(cfg: FtkConfig) -> str | None:
    """Why the checkpoint the run would resume from cannot be resumed (saved model-only), or None."""
    asked = checkpoint_asked_for(cfg)
    if asked is None or not model_only(asked[1]):
        return None
    key, checkpoint = asked
    fix = "set auto_resume: false to start afresh" if key == "auto_resume" else "start a new run"
    return (
        f"{key}: {checkpoint} holds the model only (saved with save_only_model: true: no optimizer, "
        f"schedule or RNG state), so a run cannot continue from it; {fix}"
    )


def offloading_problem() -> str | None:
    """Why ``activation_offloading`` cannot work here (no CUDA GPU, a transformers without it), or None."""
    import inspect

    import torch
    from transformers import PreTrainedModel

    if not torch.cuda.is_available():
        return (
            "activation_offloading: moves activations from the GPU to CPU memory and this machine has no "
            "CUDA GPU; set activation_offloading: false"
        )
    enable = getattr(PreTrainedModel, "activation_checkpointing_enable", None)
    if enable is None or "offload" not in inspect.signature(enable).parameters:
        import transformers

        return f"activation_offloading: needs a transformers whose checkpointing offloads (this is {transformers.__version__})"
    return None


# --- hooks ----------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level run-schedule keys (axolotl's names)."""
    register(SECTION, RunScheduleSettings, flat=True)


@hookimpl(tryfirst=True)
def rewrite_config(rewrite: ConfigRewrite) -> None:
    """``batch_size``, ``warmup_steps`` below 1 and ``gradient_checkpointing: offload`` in ftk's terms."""
    rewrite_batch_size(rewrite)
    rewrite_warmup_share(rewrite)
    rewrite_checkpointing_offload(rewrite)


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """The run-schedule keys against each other and the rest of the config."""
    return key_problems(cfg)


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Before any data work: a GPU for ``activation_offloading``; a checkpoint to resume that can be."""
    if purpose not in TRAINING:
        return
    if settings(cfg).activation_offloading and (problem := offloading_problem()) is not None:
        raise FtkError(problem)
    if (problem := resume_problem(cfg)) is not None:
        raise FtkError(problem)


@hookimpl
def training_arguments(cfg: FtkConfig) -> dict[str, Any]:
    """The TrainingArguments fields of the run-schedule keys."""
    return training_fields(cfg)


@hookimpl
def trainer_callbacks(cfg: FtkConfig) -> list[TrainerCallback]:
    """Saves/evaluations per epoch and early stopping, as the config asks."""
    callbacks: list[TrainerCallback] = []
    saves, evals = save_plan(cfg), eval_plan(cfg)
    per_save = saves.per_epoch if saves is not None and saves.kind == "per_epoch" else 0
    per_eval = evals.per_epoch if evals is not None and evals.kind == "per_epoch" and expects_eval(cfg) else 0
    if per_save or per_eval:
        callbacks.append(PerEpochSchedule(saves=per_save, evals=per_eval))
    patience = settings(cfg).early_stopping_patience
    if patience is not None:
        from ftk.plugins.run_schedule.watchdog import EarlyStopping

        callbacks.append(EarlyStopping(early_stopping_patience=patience))
    return callbacks


@hookimpl
def pre_train(cfg: FtkConfig, trainer: Trainer, model: Any, data: PreparedData) -> None:
    """Say when scheduled evaluations have no eval data; set the loss watchdog on the run guard."""
    evals = eval_plan(cfg)
    if evals is not None and evals.active and data.eval is None:
        value = settings(cfg).evals_per_epoch if evals.key == "evals_per_epoch" else eval_strategy(cfg)[1]
        say(
            f"note: {evals.key}: {value} has no eval data to evaluate on (val_set_size is 0 and there are "
            "no test_datasets): nothing is evaluated"
        )
    watch = watchdog_settings(cfg)
    if watch is not None:
        from ftk.plugins.run_schedule.watchdog import LossWatchdog

        trainer.add_callback(LossWatchdog(*watch, guard=getattr(trainer, "guard", None)))
