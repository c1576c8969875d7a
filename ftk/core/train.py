"""One training run, top to bottom: tokenizer, data, model, adapter, trainer, save."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from transformers import PrinterCallback, TrainingArguments, set_seed

from ftk.core import checkpoints
from ftk.core.config.loader import dump_config
from ftk.core.config.schema import FtkConfig
from ftk.core.data.collate import PaddingCollator
from ftk.core.data.pipeline import PreparedData, prepare_data
from ftk.core.errors import FtkError
from ftk.core.launch import distributed_arguments, main_process_first, rank
from ftk.core.model import load_model, load_tokenizer
from ftk.core.plugins import FtkPluginManager
from ftk.core.registry import merge_contributions
from ftk.core.summary import print_summary, summary_rows, write_summary
from ftk.core.trainer import FtkTrainer
from ftk.integrations.glibc_malloc import large_allocations_from_the_heap

RESOLVED_CONFIG_NAME = "ftk_config.yaml"


@dataclass
class TrainResult:
    """What a run produced; ``status`` is "finished" or says why it stopped early."""

    output_dir: Path
    global_step: int
    train_loss: float
    eval_loss: float | None
    data: PreparedData
    model: Any
    status: str = "finished"
    checkpoint: Path | None = None


class TrainingFailed(FtkError):
    """The run started but could not go on (diverged, out of memory): exit code 1, not 2."""

    exit_code = 1


def _checkpointing_argument(enabled: bool) -> dict[str, bool]:
    """transformers 5 renamed ``gradient_checkpointing`` to ``activation_checkpointing``."""
    if not enabled:
        return {}
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {
        "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": True
    }


def tracker_settings(cfg: FtkConfig) -> dict[str, Any]:
    """TrainingArguments for the experiment trackers; sets the WANDB_* variables wandb reads."""
    trackers = cfg.trackers
    if "wandb" in trackers:
        for variable, value in (
            ("WANDB_PROJECT", cfg.wandb_project),
            ("WANDB_ENTITY", cfg.wandb_entity),
            ("WANDB_MODE", cfg.wandb_mode),
        ):
            if value:
                os.environ[variable] = value
        os.environ.setdefault("WANDB_DIR", cfg.output_dir)
    settings: dict[str, Any] = {"report_to": trackers or "none"}
    if cfg.wandb_name:
        settings["run_name"] = cfg.wandb_name
    return settings


def plugin_training_arguments(cfg: FtkConfig, hooks: Any) -> dict[str, Any]:
    """The TrainingArguments fields plugins contribute; two plugins setting one field is an error."""
    if hooks is None:
        return {}
    return merge_contributions(hooks.training_arguments(cfg=cfg), "training argument")


def training_arguments(cfg: FtkConfig, has_eval: bool, hooks: Any = None) -> TrainingArguments:
    """transformers' TrainingArguments for ``cfg`` (loss, optimizer, schedule come from hooks)."""
    best_model = {"metric_for_best_model": "eval_loss", "greater_is_better": False} if has_eval else {}
    arguments = dict(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size or cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.bf16,
        fp16=cfg.fp16,
        tf32=True if cfg.tf32 else None,
        **_checkpointing_argument(cfg.gradient_checkpointing),
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN, and the run guard stops the run
        eval_strategy="steps" if has_eval and cfg.eval_steps else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=cfg.load_best_model_at_end and has_eval,
        **best_model,
        seed=cfg.seed,
        data_seed=cfg.seed,
        **tracker_settings(cfg),
        **distributed_arguments(),
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    arguments.update(plugin_training_arguments(cfg, hooks))
    return TrainingArguments(**arguments)


def write_resolved_config(cfg: FtkConfig, output_dir: Path) -> Path:
    """Save the validated config, defaults filled in, next to the trained weights."""
    path = output_dir / RESOLVED_CONFIG_NAME
    path.write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False), encoding="utf-8")
    return path


def run_training(cfg: FtkConfig, manager: FtkPluginManager, console: Console | None = None) -> TrainResult:
    """Fine-tune as ``cfg`` says and save the adapter (or full weights) and tokenizer to ``output_dir``."""
    console = console or Console(stderr=True)
    if rank() != 0:  # one process speaks for the run
        console = Console(quiet=True)
    hooks = manager.hook
    hooks.check_environment(cfg=cfg)  # a run this machine cannot do fails before the data work
    registry = manager.collect_registrations()
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg, hooks)
    # Data first: a bad row fails the run before anything is written to output_dir.
    with main_process_first():  # rank 0 writes the data cache, the other ranks then read it
        data = prepare_data(cfg, tokenizer, registry)
    summary = data.summary()
    console.print(
        f"data: {summary['train_rows']:,} train rows, {summary['eval_rows']:,} eval rows, "
        f"{summary['trained_tokens']:,} of {summary['tokens']:,} tokens trained; "
        f"{'reusing cached' if data.from_cache else 'cached'} data in {data.cache_dir}" + data.packing_note(),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    model = load_model(cfg, hooks, tokenizer)
    output_dir = Path(cfg.output_dir)
    resume_from = checkpoint_to_resume(cfg, console)

    callbacks = [callback for group in hooks.trainer_callbacks(cfg=cfg) for callback in group or []]
    trainer = FtkTrainer(
        model=model,
        args=training_arguments(cfg, has_eval=data.eval is not None, hooks=hooks),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=PaddingCollator(pad_token_id=tokenizer.pad_token_id),  # unpacked batches
        processing_class=tokenizer,
        callbacks=callbacks,
        cfg=cfg,
        hooks=hooks,
    )
    trainer.remove_callback(PrinterCallback)
    hooks.pre_train(cfg=cfg, trainer=trainer, model=trainer.model, data=data)
    on_cpu = trainer.args.device.type == "cpu"
    try:
        with trainer.guard.signal_handlers():
            with large_allocations_from_the_heap() if on_cpu else contextlib.nullcontext():
                output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.OutOfMemoryError as exc:
        raise TrainingFailed(out_of_memory_message(cfg, trainer.state.global_step + 1, exc)) from exc

    guard = trainer.guard
    if guard.divergence is not None:
        last_good = checkpoints.latest_checkpoint(output_dir)
        status = f"diverged at step {guard.divergence.step}"
        finish_reports(cfg, hooks, trainer, status, console)
        raise TrainingFailed(divergence_message(guard.divergence.describe(), last_good))
    if guard.stopped_at is not None:
        checkpoint = output_dir / checkpoints.checkpoint_name(guard.stopped_at)
        status = f"stopped by {guard.stop_signal} at step {guard.stopped_at}"
        finish_reports(cfg, hooks, trainer, status, console)
        console.print(
            f"{status}: checkpoint saved to {checkpoint}; continue with --auto_resume true "
            f"(or resume_from_checkpoint: {checkpoint}). The final model was not saved.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return TrainResult(
            output_dir,
            trainer.state.global_step,
            output.training_loss,
            None,
            data,
            trainer.model,
            status,
            checkpoint,
        )

    eval_loss = None
    if data.eval is not None:
        last = next((log for log in reversed(trainer.state.log_history) if "eval_loss" in log), None)
        if last is None or last.get("step") != trainer.state.global_step:
            last = trainer.evaluate()
        eval_loss = last.get("eval_loss")

    trainer.save_model(str(output_dir))
    if trainer.args.should_save:
        write_resolved_config(cfg, output_dir)
        (output_dir / "data_stats.json").write_text(
            json.dumps([vars(source) for source in data.sources], indent=2), encoding="utf-8"
        )
    hooks.post_train(cfg=cfg, trainer=trainer, model=trainer.model, tokenizer=tokenizer)
    finish_reports(cfg, hooks, trainer, "finished", console)
    return TrainResult(output_dir, output.global_step, output.training_loss, eval_loss, data, trainer.model)


def checkpoint_to_resume(cfg: FtkConfig, console: Console) -> Path | None:
    """The checkpoint to continue from (``resume_from_checkpoint`` or, with ``auto_resume``, the latest).

    Also clears what an interrupted save left in ``output_dir``.
    """
    for leftover in checkpoints.remove_incomplete(cfg.output_dir):
        console.print(f"removed an incomplete checkpoint: {leftover}", markup=False, highlight=False)
    if cfg.resume_from_checkpoint:
        path = Path(cfg.resume_from_checkpoint)
        if not checkpoints.is_complete(path):
            raise FtkError(
                f"resume_from_checkpoint: {path} is not a complete checkpoint "
                f"(expected a checkpoint-N directory holding {checkpoints.TRAINER_STATE_FILE})"
            )
        return path
    if not cfg.auto_resume:
        if checkpoints.latest_checkpoint(cfg.output_dir) is not None:
            console.print(
                f"note: {cfg.output_dir} holds checkpoints of an earlier run; starting afresh "
                "(auto_resume: true continues from the latest)",
                markup=False,
                highlight=False,
            )
        return None
    latest = checkpoints.latest_checkpoint(cfg.output_dir)
    if latest is None:
        console.print(f"auto_resume: no checkpoint in {cfg.output_dir}; starting afresh", markup=False)
    else:
        console.print(f"auto_resume: resuming from {latest}", markup=False, highlight=False)
    return latest


def divergence_message(what: str, last_good: Path | None) -> str:
    """The one-paragraph error for a NaN/infinite loss or gradient norm."""
    where = (
        f"the last good checkpoint is {last_good} (auto_resume: true continues from it)"
        if last_good is not None
        else "no checkpoint was saved before it (set save_steps to keep some)"
    )
    return (
        f"training diverged, {what}; stopped without saving; {where}. "
        "Try a lower learning_rate, a longer warmup, max_grad_norm: 1.0, or bf16 instead of fp16."
    )


def out_of_memory_message(cfg: FtkConfig, step: int, exc: BaseException) -> str:
    """What to lower after an out-of-memory error, with the current values."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hints = [
        f"micro_batch_size (now {cfg.micro_batch_size}; raise gradient_accumulation_steps to keep the batch)",
        f"sequence_len (now {cfg.sequence_len})",
    ]
    if not cfg.gradient_checkpointing:
        hints.append("or set gradient_checkpointing: true")
    return f"out of memory at step {step} ({first_line}). Lower " + ", ".join(hints) + "."


def finish_reports(cfg: FtkConfig, hooks: Any, trainer: FtkTrainer, status: str, console: Console) -> None:
    """Summary table (printed and in summary.md) and the plugins' end-of-run reports."""
    if not trainer.args.should_save:
        return
    hooks.run_finished(cfg=cfg, trainer=trainer, status=status)
    extra = [row for group in hooks.summary_rows(cfg=cfg, trainer=trainer) for row in group or []]
    rows = summary_rows(cfg, trainer, status, extra_rows=extra)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    write_summary(Path(cfg.output_dir) / "summary.md", rows)
    print_summary(console, rows)
