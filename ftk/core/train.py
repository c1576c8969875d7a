"""One training run, top to bottom: tokenizer, data, model, adapter, trainer, save."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from transformers import PrinterCallback, TrainingArguments, set_seed

from ftk.core.config.loader import dump_config
from ftk.core.config.schema import FtkConfig
from ftk.core.data.collate import PaddingCollator
from ftk.core.data.pipeline import PreparedData, prepare_data
from ftk.core.model import load_model, load_tokenizer
from ftk.core.plugins import FtkPluginManager
from ftk.core.trainer import FtkTrainer
from ftk.integrations.glibc_malloc import large_allocations_from_the_heap

RESOLVED_CONFIG_NAME = "ftk_config.yaml"


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    global_step: int
    train_loss: float
    eval_loss: float | None
    data: PreparedData
    model: Any


def _checkpointing_argument(enabled: bool) -> dict[str, bool]:
    """transformers 5 renamed ``gradient_checkpointing`` to ``activation_checkpointing``."""
    if not enabled:
        return {}
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {
        "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": True
    }


def training_arguments(cfg: FtkConfig, has_eval: bool) -> TrainingArguments:
    """transformers' TrainingArguments for ``cfg`` (loss, optimizer, schedule come from hooks)."""
    return TrainingArguments(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
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
        eval_strategy="steps" if has_eval and cfg.eval_steps else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def write_resolved_config(cfg: FtkConfig, output_dir: Path) -> Path:
    """Save the validated config, defaults filled in, next to the trained weights."""
    path = output_dir / RESOLVED_CONFIG_NAME
    path.write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False), encoding="utf-8")
    return path


def run_training(cfg: FtkConfig, manager: FtkPluginManager, console: Console | None = None) -> TrainResult:
    """Fine-tune as ``cfg`` says and save the adapter (or full weights) and tokenizer to ``output_dir``."""
    console = console or Console(stderr=True)
    hooks = manager.hook
    registry = manager.collect_registrations()
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg, hooks)
    # Data first: a bad row fails the run before anything is written to output_dir.
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

    callbacks = [callback for group in hooks.trainer_callbacks(cfg=cfg) for callback in group or []]
    trainer = FtkTrainer(
        model=model,
        args=training_arguments(cfg, has_eval=data.eval is not None),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=PaddingCollator(pad_token_id=tokenizer.pad_token_id),  # unpacked batches
        processing_class=tokenizer,
        callbacks=callbacks,
        cfg=cfg,
        hooks=hooks,
    )
    trainer.remove_callback(PrinterCallback)
    on_cpu = trainer.args.device.type == "cpu"
    with large_allocations_from_the_heap() if on_cpu else contextlib.nullcontext():
        output = trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    eval_loss = None
    if data.eval is not None:
        last = next((log for log in reversed(trainer.state.log_history) if "eval_loss" in log), None)
        if last is None or last.get("step") != trainer.state.global_step:
            last = trainer.evaluate()
        eval_loss = last.get("eval_loss")

    output_dir = Path(cfg.output_dir)
    trainer.save_model(str(output_dir))
    write_resolved_config(cfg, output_dir)
    (output_dir / "data_stats.json").write_text(
        json.dumps([vars(source) for source in data.sources], indent=2), encoding="utf-8"
    )
    hooks.post_train(cfg=cfg, trainer=trainer, model=trainer.model, tokenizer=tokenizer)
    return TrainResult(output_dir, output.global_step, output.training_loss, eval_loss, data, trainer.model)


def summary_rows(result: TrainResult) -> list[tuple[str, Any]]:
    """Label/value pairs for the end-of-run summary."""
    rows: list[tuple[str, Any]] = [
        ("optimizer steps", result.global_step),
        ("mean train loss", f"{result.train_loss:.4f}"),
    ]
    if result.eval_loss is not None:
        rows.append(("final eval loss", f"{result.eval_loss:.4f}"))
    rows.append(("output", str(result.output_dir)))
    return rows
