"""``ftk train``: the training recipe, top to bottom, and the command that runs it.

``run_training`` composes the core: tokenizer, data, model and adapter, ``FtkTrainer`` (whose
module documents one optimizer step), the final save and the reports.  It expects a config that
went through ``ftk.core.lifecycle.prepare`` (validated, machine checked).

With ``--nproc-per-node N`` ftk re-runs itself under ``torch.distributed.run`` (what ``torchrun``
runs), one process per device; Trainer then trains with DistributedDataParallel (NCCL on GPUs,
gloo on CPU).  ``torchrun -m ftk.cli train cfg.yaml`` starts the same processes from outside.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from transformers import PrinterCallback, TrainingArguments, set_seed

from ftk.commands.common import add_config_argument
from ftk.core import checkpoints, run_dir
from ftk.core.config.loader import dump_config
from ftk.core.config.paths import checkpoint_problem
from ftk.core.config.schema import FtkConfig
from ftk.core.data.collate import PaddingCollator
from ftk.core.data.pipeline import PreparedData, prepare_data
from ftk.core.errors import FtkError
from ftk.core.files import DiskFullError, atomic_write_text, free_space, is_disk_full
from ftk.core.hooks import Hooks
from ftk.core.launch import (
    as_rank_zero_of,
    distributed_arguments,
    main_process_first,
    one_process_group_env,
    rank,
    world_size,
)
from ftk.core.lifecycle import prepare
from ftk.core.model import load_model, load_tokenizer
from ftk.core.plugins import FtkPluginManager
from ftk.core.registry import Registry
from ftk.core.trainer import FtkTrainer
from ftk.integrations.glibc_malloc import large_allocations_from_the_heap

RESOLVED_CONFIG_NAME = run_dir.RESOLVED_CONFIG_NAME


@dataclass
class TrainResult:
    """What a run produced; ``status`` is "finished" or says why it stopped early."""

    output_dir: Path
    global_step: int
    train_loss: float | None  # None: nothing was trained (the run had already finished)
    eval_loss: float | None
    data: PreparedData | None
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


def tracker_callbacks(cfg: FtkConfig, registry: Registry) -> list[Any]:
    """The callbacks of the trackers ``report_to`` names, and of those a plugin key turns on."""
    names = list(cfg.report_to)
    names += [
        name
        for name, tracker in registry.trackers.items()
        if tracker.enabled_by is not None and tracker.enabled_by(cfg)
    ]
    return [registry.lookup("trackers", name).callback(cfg) for name in dict.fromkeys(names)]


def training_arguments(cfg: FtkConfig, has_eval: bool, hooks: Hooks | None = None) -> TrainingArguments:
    """transformers' TrainingArguments for ``cfg`` and the fields plugins contribute.

    DeepSpeed and FSDP need a process group even for one process: when a plugin asks for either
    and no launcher started this one, the core sets the variables a launcher would.
    """
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
        report_to="none",  # trackers are callbacks of the registered trackers
        **distributed_arguments(),
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if hooks is not None:
        arguments.update(hooks.training_arguments(cfg))
    if arguments.get("deepspeed") or arguments.get("fsdp"):
        os.environ.update(one_process_group_env(os.environ))
    return TrainingArguments(**arguments)


def write_resolved_config(cfg: FtkConfig, output_dir: Path) -> Path:
    """Save the validated config, defaults filled in, next to the trained weights."""
    return atomic_write_text(
        output_dir / RESOLVED_CONFIG_NAME, yaml.safe_dump(dump_config(cfg), sort_keys=False)
    )


def run_training(cfg: FtkConfig, manager: FtkPluginManager, console: Console | None = None) -> TrainResult:
    """Fine-tune as ``cfg`` says and save the adapter (or full weights) and tokenizer to ``output_dir``.

    The main process holds ``output_dir``'s lock for the whole run (a second run on it stops at
    once) and, under it, refuses a folder of someone else's files (``ftk.core.run_dir``).  A run
    whose checkpoint is already at its last step only says so.  A full disk, while saving or
    writing anything else, is an error naming the size needed; the last good checkpoint stays.
    """
    console = console or Console(stderr=True)
    if rank() != 0:  # one process speaks for the run
        console = Console(quiet=True)
        quiet_libraries()
    with run_dir.hold(cfg.output_dir, primary=rank() == 0) as held:
        return _train_in(cfg, manager, console, held)


def _train_in(
    cfg: FtkConfig, manager: FtkPluginManager, console: Console, held: run_dir.HeldRunDir
) -> TrainResult:
    """:func:`run_training` once ``output_dir`` is held: resume or start, data, marker, model, train."""
    output_dir = Path(cfg.output_dir)
    if held.locked:  # again, now that no other run can write here
        problem = run_dir.ownership_problem(cfg)
        if problem is not None:
            raise FtkError(f"output_dir: {problem}")
    earlier = run_dir.read_run(output_dir)
    resume_from = checkpoint_to_resume(cfg, console, clean=held.locked)
    if resume_from is not None:
        finished = checkpoints.finished_message(resume_from, cfg.max_steps, cfg.num_epochs)
        if finished is not None:  # nothing to train: touch nothing
            console.print(finished, markup=False, highlight=False, soft_wrap=True)
            step = int(checkpoints.trainer_state(resume_from).get("global_step") or 0)
            return TrainResult(output_dir, step, None, None, None, None, "already finished", resume_from)
    start = start_message(cfg, earlier, resume_from)
    if start is not None:
        console.print(start, markup=False, highlight=False, soft_wrap=True)
    lineage = checkpoints.Lineage.starting(resume_from)
    hooks = manager.hooks
    registry = manager.collect_registrations()
    set_seed(cfg.seed)
    tokenizer, new_token_ids = load_tokenizer(cfg, hooks)
    # Data first: a bad row fails the run before anything is written to output_dir.
    with main_process_first():  # rank 0 writes the data cache, the other ranks then read it
        data = prepare_data(cfg, tokenizer, registry)
    summary = data.summary()
    console.print(
        f"data: {summary['train_rows']:,} train rows, {summary['eval_rows']:,} eval rows, "
        f"{summary['trained_tokens']:,} of {summary['tokens']:,} tokens trained; "
        f"{'reusing cached' if data.from_cache else 'cached'} data in {data.cache_dir}"
        + data.packing_note()
        + data.dropped_note(),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    held.mark(cfg, lineage, resume_from)  # from here on the run writes into output_dir
    model = load_model(cfg, hooks, registry, tokenizer, new_token_ids)

    callbacks = [*hooks.trainer_callbacks(cfg), *tracker_callbacks(cfg, registry)]
    trainer = FtkTrainer(
        model=model,
        args=training_arguments(cfg, has_eval=data.eval is not None, hooks=hooks),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=PaddingCollator(  # unpacked batches
            pad_token_id=tokenizer.pad_token_id, pad_to_length=cfg.padded_length
        ),
        processing_class=tokenizer,
        callbacks=callbacks,
        cfg=cfg,
        hooks=hooks,
        registry=registry,
        lineage=lineage,
    )
    trainer.remove_callback(PrinterCallback)
    hooks.pre_train(cfg, trainer, trainer.model, data)
    try:
        return train_and_save(cfg, hooks, trainer, data, tokenizer, resume_from, console)
    except FtkError:  # a full disk while saving says so itself
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        where = f"writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else "writing"
        message = checkpoints.disk_full_message(
            output_dir,
            where,
            None,
            free_space(output_dir),
            f"the run stopped at step {trainer.state.global_step}",
            lineage,
        )
        raise DiskFullError(message) from exc


def train_and_save(
    cfg: FtkConfig,
    hooks: Hooks,
    trainer: FtkTrainer,
    data: PreparedData,
    tokenizer: Any,
    resume_from: Path | None,
    console: Console,
) -> TrainResult:
    """Train, then save the final model and the reports, or say why the run stopped early."""
    output_dir = Path(cfg.output_dir)
    on_cpu = trainer.args.device.type == "cpu"
    try:
        with trainer.guard.signal_handlers():
            with large_allocations_from_the_heap() if on_cpu else contextlib.nullcontext():
                output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.OutOfMemoryError as exc:
        raise TrainingFailed(out_of_memory_message(cfg, trainer.state.global_step + 1, exc)) from exc

    guard = trainer.guard
    if guard.divergence is not None:
        last_good = checkpoints.latest_checkpoint(output_dir, trainer.lineage) or resume_from
        status = f"diverged at step {guard.divergence.step}"
        finish_reports(cfg, hooks, trainer, status)
        raise TrainingFailed(divergence_message(guard.divergence.describe(), last_good))
    if guard.stopped_at is not None:
        checkpoint = output_dir / checkpoints.checkpoint_name(guard.stopped_at)
        status = f"stopped by {guard.stop_signal} at step {guard.stopped_at}"
        finish_reports(cfg, hooks, trainer, status)
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

    trainer.save_model_staged(output_dir)
    if trainer.args.should_save:
        write_resolved_config(cfg, output_dir)
        stats = json.dumps([vars(source) for source in data.sources], indent=2)
        atomic_write_text(output_dir / "data_stats.json", stats)
    hooks.post_train(cfg, trainer, trainer.model, tokenizer)
    finish_reports(cfg, hooks, trainer, "finished")
    return TrainResult(output_dir, output.global_step, output.training_loss, eval_loss, data, trainer.model)


def quiet_libraries() -> None:
    """In a process other than rank 0: no progress bars, warnings or log records below errors from libraries."""
    import logging
    import warnings

    import datasets
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")


def checkpoint_to_resume(cfg: FtkConfig, console: Console, clean: bool = True) -> Path | None:
    """The checkpoint to continue from: ``resume_from_checkpoint`` or, with ``auto_resume``, the latest.

    The latest is that of the last run started in ``output_dir`` (its marker's lineage), else the
    highest step there.  Each of its files must load safely (``checkpoints.invalid_file``).  With
    ``clean`` (the main process) it also clears what an interrupted save left in ``output_dir``.
    """
    if clean:
        for leftover in checkpoints.remove_incomplete(cfg.output_dir):
            console.print(f"removed what an interrupted save left: {leftover}", markup=False, highlight=False)
    if cfg.resume_from_checkpoint:
        problem = checkpoint_problem(
            cfg.resume_from_checkpoint
        )  # checked by prepare(); run_training may run without it
        if problem is not None:
            raise FtkError(f"resume_from_checkpoint: {problem}")
        return Path(cfg.resume_from_checkpoint)
    if not cfg.auto_resume:
        return None
    last_run = run_dir.last_lineage(cfg.output_dir)
    latest = (
        checkpoints.latest_checkpoint(cfg.output_dir, last_run) if last_run is not None else None
    ) or checkpoints.latest_checkpoint(cfg.output_dir)
    if latest is not None and (problem := checkpoints.invalid_file(latest)) is not None:
        raise FtkError(f"auto_resume: {problem}")
    return latest


def start_message(cfg: FtkConfig, earlier: run_dir.RunInfo | None, resume_from: Path | None) -> str | None:
    """The line saying what this run does with ``output_dir``: resume a run, start one beside an earlier one."""
    output_dir = Path(cfg.output_dir)
    if resume_from is not None:
        origin = run_dir.origin(resume_from)
        key = "resume_from_checkpoint" if cfg.resume_from_checkpoint else "auto_resume"
        return f"{key}: resuming from {resume_from}" + (f" ({origin})" if origin else "")
    if earlier is not None:
        hint = "; auto_resume: true continues it" if checkpoints.latest_checkpoint(output_dir) else ""
        lead = "auto_resume: no checkpoint to resume; " if cfg.auto_resume else "note: "
        return (
            f"{lead}{output_dir} holds {earlier.describe()}; this run starts a new run in it: files of "
            f"the same name (the model, checkpoints of the same step) are replaced{hint}"
        )
    if cfg.auto_resume:
        return f"auto_resume: no checkpoint in {output_dir}; starting afresh"
    if cfg.overwrite_output_dir and run_dir.foreign_entries(output_dir):
        return (
            f"note: {output_dir} holds files ftk did not write; training into it (overwrite_output_dir: "
            "true): files of the same name are replaced"
        )
    return None


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


def finish_reports(cfg: FtkConfig, hooks: Hooks, trainer: FtkTrainer, status: str) -> None:
    """The plugins' end-of-run reports (the summary table, the loss plot), main process only."""
    if trainer.args.should_save:
        hooks.run_finished(cfg, trainer, status, hooks.summary_rows(cfg, trainer))


# --- the command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ftk train CONFIG [--nproc-per-node N]``."""
    parser.description = (
        "Fine-tune as the config says: writes the adapter (or full model), metrics.jsonl, "
        "summary.md and loss.png to output_dir. Ctrl-C or SIGTERM saves a checkpoint and exits; "
        "--auto_resume true continues from the latest checkpoint."
    )
    add_config_argument(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train into an output_dir that holds files ftk did not write (overwrite_output_dir: true)",
    )
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="train in N processes on this machine (one per GPU; gloo DDP on CPU)",
    )


def run(args: argparse.Namespace) -> int:
    """Train; a stop by signal ends with 0 (the summary says where the checkpoint is)."""
    if args.nproc_per_node < 1:
        raise FtkError(f"--nproc-per-node: must be at least 1, not {args.nproc_per_node}")
    overrides = list(args.overrides)
    if getattr(args, "overwrite", False):
        overrides += ["--overwrite_output_dir", "true"]
    if args.nproc_per_node > 1:
        if world_size() > 1:
            raise FtkError("--nproc-per-node: this process was already started by a distributed launcher")
        # The whole check of a run, here, as rank 0 will make it: a config or machine problem is one
        # line from this process, not one per process and a launcher traceback.
        with as_rank_zero_of(args.nproc_per_node):
            prepared = prepare(args.config, overrides, purpose="train", manager=args.manager)
        with run_dir.hold(prepared.cfg.output_dir):  # a run already there: one line (rank 0 locks it again)
            pass
        return launch(args.nproc_per_node, without_nproc(args.argv))
    prepared = prepare(args.config, overrides, purpose="train", manager=args.manager)
    run_training(prepared.cfg, prepared.manager)  # progress and the summary go to stderr
    return 0


def without_nproc(argv: Sequence[str]) -> list[str]:
    """The command line minus ``--nproc-per-node N`` (the launched processes train as one each)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            kept.append(arg)
    return kept


def launcher_command(nproc_per_node: int, ftk_args: Sequence[str]) -> list[str]:
    """The command that runs ``ftk <ftk_args>`` in ``nproc_per_node`` processes.

    ``python -m`` would put the working directory first on ``sys.path``, so a ``torch.py`` or
    ``ftk/`` there would be imported instead of the real one: ``-P`` (Python 3.11+) leaves it out,
    and the launcher passes that on to the processes it starts (``PYTHONSAFEPATH``).
    """
    return [
        sys.executable,
        *(["-P"] if sys.version_info >= (3, 11) else []),
        "-m",
        "ftk.core.launch",  # torch.distributed.run, reporting a failed process by its exit code
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        "ftk.cli",
        *ftk_args,
    ]


def launch(nproc_per_node: int, ftk_args: Sequence[str]) -> int:
    """Run ftk in ``nproc_per_node`` processes and return the launcher's exit code."""
    if nproc_per_node < 1:
        raise FtkError(f"--nproc-per-node: must be at least 1, not {nproc_per_node}")
    if world_size() > 1:
        raise FtkError("--nproc-per-node: this process was already started by a distributed launcher")
    return subprocess.call(launcher_command(nproc_per_node, ftk_args))
