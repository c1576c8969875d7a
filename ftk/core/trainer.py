"""``transformers.Trainer`` with its loss, optimizer and scheduler taken from plugin hooks.

On top of Trainer it:

* counts the real (non-padding) tokens it trains on, so every log entry carries
  ``tokens_per_second`` and ``num_tokens``, plus the scalars plugins report through ``StepMetrics``;
* evaluates the mean loss over every trained token of the eval set (``ftk.core.evaluate``), with
  perplexity, independent of batching and packing;
* writes each checkpoint under a temporary name and renames it when complete (``ftk.core.checkpoints``);
* stops cleanly on SIGINT/SIGTERM and on a non-finite loss (``ftk.core.run_guard``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from ftk.core import checkpoints
from ftk.core.config.schema import FtkConfig
from ftk.core.data.packing import REAL_TOKENS_KEY, PackedBatchSampler, PackedDataset, PackingCollator
from ftk.core.errors import FtkError
from ftk.core.evaluate import eval_dataloader, evaluate_loss, hook_summed_loss
from ftk.core.run_guard import RunGuard
from ftk.core.step_metrics import StepMetrics


class EpochDataLoader(DataLoader):
    """A DataLoader whose ``set_epoch`` (called by Trainer each epoch) reaches its batch sampler."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class FtkTrainer(Trainer):
    """A Trainer whose extension points are ftk's hooks rather than subclassing."""

    # The loss hook returns the loss already divided by the step's trained-token count.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, cfg: FtkConfig, hooks: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cfg = cfg
        self.hooks = hooks
        # Ask Trainer to count the trained tokens of each whole optimizer step (num_items_in_batch).
        self.model_accepts_loss_kwargs = True
        self._tokens_seen = torch.zeros((), dtype=torch.long)
        self._tokens_at_last_log = 0
        self._time_at_last_log: float | None = None
        self.step_metrics = StepMetrics()
        self._step_loss = torch.zeros(())
        self._last_grad_norm: Any = None  # a tensor from Trainer, or a float under DeepSpeed
        self._checkpoint_staging: str | None = None
        self.guard = RunGuard(self._step_health)
        self.add_callback(self.guard)
        self.add_callback(_TokenCounterRestore(self))

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """Delegate to the ``compute_loss`` hook (the default plugin: token-mean cross-entropy)."""
        inputs = {key: value for key, value in inputs.items() if key != REAL_TOKENS_KEY}
        loss = self.hooks.compute_loss(
            cfg=self.cfg,
            model=model,
            inputs=inputs,
            num_items_in_batch=num_items_in_batch,
            metrics=self.step_metrics,
        )
        if loss is None:
            raise FtkError("no plugin computed the loss (every compute_loss hook returned None)")
        if (
            num_items_in_batch is not None
            and self.args.average_tokens_across_devices
            and (self.args.world_size > 1)
        ):
            # num_items_in_batch counts every rank's tokens; gradients are averaged over ranks.
            loss = loss * self.args.world_size
        # Evaluation asks for outputs; the loss hook only yields the loss, and ftk evaluates loss only.
        return (loss, {}) if return_outputs else loss

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any):
        """Count the real tokens of the micro-batch (on device, no sync), then train on it."""
        # Packed batches say how many tokens are real; padded ones have an attention mask.
        real = inputs.get(REAL_TOKENS_KEY)
        if real is None and inputs.get("attention_mask") is not None:
            real = inputs["attention_mask"].sum()
        if real is not None:
            if self._tokens_seen.device != real.device:
                self._tokens_seen = self._tokens_seen.to(real.device)
            self._tokens_seen += real
        loss = super().training_step(model, inputs, *args, **kwargs)
        if self._step_loss.device != loss.device:
            self._step_loss = self._step_loss.to(loss.device)
        self._step_loss += loss.detach().float()
        return loss

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        """Keep the step's gradient norm for the divergence check (Trainer computes it anyway).

        It stays a tensor here; :meth:`_step_health` reads it together with the loss.
        """
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._last_grad_norm = norm
        return norm

    def _step_health(self) -> tuple[float, float | None]:
        """The finished step's loss and gradient norm; resets them for the next step.

        Both come to the host in one transfer, the only device sync ftk adds to a step.
        """
        norm, self._last_grad_norm = self._last_grad_norm, None
        if torch.is_tensor(norm):
            pair = torch.stack([self._step_loss.reshape(()), norm.detach().to(self._step_loss).reshape(())])
            loss, norm = pair.tolist()
        else:
            loss = float(self._step_loss)
            norm = float(norm) if norm is not None else None
        self._step_loss.zero_()
        return loss, norm

    def get_train_dataloader(self) -> DataLoader:
        """Packed batches when ``sample_packing`` is on, else transformers' own loader."""
        if not self.cfg.sample_packing:
            return super().get_train_dataloader()
        return self._packed_dataloader(self.train_dataset, shuffle=True)

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Mean loss over every trained token of the eval set, with perplexity and token count.

        Logs ``eval_loss``, ``eval_perplexity``, ``eval_tokens`` and ``eval_runtime``.
        """
        if eval_dataset is None or isinstance(eval_dataset, str):  # ftk has one eval set
            eval_dataset = self.eval_dataset
        if eval_dataset is None:
            raise FtkError("no eval set: set val_set_size or test_datasets")
        loader = eval_dataloader(
            self.cfg,
            eval_dataset,
            self.processing_class.pad_token_id,
            batch_size=self.args.per_device_eval_batch_size,
            rank=self.args.process_index,
            world_size=self.args.world_size,
        )
        summed = hook_summed_loss(self.cfg, self.hooks)

        def summed_with_autocast(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with self.autocast_smart_context_manager():
                return summed(model, batch)

        start = time.perf_counter()
        result = evaluate_loss(self.model, loader, summed_with_autocast, device=self.args.device)
        metrics = result.as_metrics(prefix=f"{metric_key_prefix}_")
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _get_output_dir(self, trial: Any) -> str:
        """Trainer writes a checkpoint into this directory: the staging one while a save is running."""
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Save under ``.incomplete-checkpoint-N/`` and rename to ``checkpoint-N`` once complete."""
        run_dir = Path(super()._get_output_dir(trial))
        step = self.state.global_step
        name = checkpoints.checkpoint_name(step)
        staging = checkpoints.staging_root(run_dir, step)
        self._checkpoint_staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_staging = None
        if self.state.best_global_step:
            # Trainer looked for the best checkpoint in the staging directory; point at its final place.
            best = run_dir / checkpoints.checkpoint_name(self.state.best_global_step)
            if self.state.best_global_step == step or best.is_dir():
                self.state.best_model_checkpoint = str(best)
        distributed = self.args.world_size > 1 and torch.distributed.is_initialized()
        if distributed:  # every rank has written its part (e.g. its RNG state) before the rename
            torch.distributed.barrier()
        if self.args.should_save:
            self.state.save_to_json(str(staging / name / checkpoints.TRAINER_STATE_FILE))
            checkpoints.publish(staging / name, run_dir / name)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        if distributed:
            torch.distributed.barrier()

    def _packed_dataloader(self, dataset: Any, shuffle: bool) -> DataLoader:
        sampler = PackedBatchSampler(
            dataset["length"],
            capacity=self.cfg.sequence_len,
            micro_batch_size=self.cfg.micro_batch_size,
            seed=self.cfg.seed,
            rank=self.args.process_index,
            world_size=self.args.world_size,
            shuffle=shuffle,
        )
        return EpochDataLoader(
            PackedDataset(dataset),
            batch_sampler=sampler,
            collate_fn=PackingCollator(pad_token_id=self.processing_class.pad_token_id),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """Build the optimizer through the ``create_optimizer`` hook."""
        if self.optimizer is None:
            optimizer = self.hooks.create_optimizer(cfg=self.cfg, model=model or self.model)
            if optimizer is None:
                raise FtkError(f"optimizer: no plugin builds {self.cfg.optimizer!r}")
            self.optimizer = optimizer
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """Build the learning-rate scheduler through the ``create_scheduler`` hook."""
        if self.lr_scheduler is None:
            scheduler = self.hooks.create_scheduler(
                cfg=self.cfg, optimizer=optimizer or self.optimizer, num_training_steps=num_training_steps
            )
            if scheduler is None:
                raise FtkError(f"lr_scheduler: no plugin builds {self.cfg.lr_scheduler!r}")
            self.lr_scheduler = scheduler
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``tokens_per_second`` and ``num_tokens`` to training log entries."""
        if "loss" in logs:
            now = time.perf_counter()
            seen = int(self._tokens_seen.item())
            if self._time_at_last_log is not None and now > self._time_at_last_log:
                rate = (seen - self._tokens_at_last_log) / (now - self._time_at_last_log)
                logs["tokens_per_second"] = round(rate, 1)
            logs["num_tokens"] = seen
            self.state.num_input_tokens_seen = seen
            self._tokens_at_last_log, self._time_at_last_log = seen, now
            logs.update({name: round(value, 6) for name, value in self.step_metrics.pop_means().items()})
        super().log(logs, start_time)

    def train(self, *args: Any, **kwargs: Any):
        """Train, measuring token throughput from this call on."""
        self._time_at_last_log = time.perf_counter()
        self._tokens_at_last_log = int(self._tokens_seen.item())
        return super().train(*args, **kwargs)


class _TokenCounterRestore(TrainerCallback):
    """On resume, continue the trained-token count from the checkpoint's trainer state."""

    def __init__(self, trainer: FtkTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        seen = int(state.num_input_tokens_seen or 0)
        if seen:
            self.trainer._tokens_seen.fill_(seen)
            self.trainer._tokens_at_last_log = seen
