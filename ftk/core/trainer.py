"""``transformers.Trainer`` with its loss, optimizer and scheduler taken from plugin hooks.

It also counts the real (non-padding) tokens it trains on, so that every log entry carries
``tokens_per_second`` and ``num_tokens``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from ftk.core.config.schema import FtkConfig
from ftk.core.data.packing import REAL_TOKENS_KEY, PackedBatchSampler, PackedDataset, PackingCollator
from ftk.core.errors import FtkError


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
            cfg=self.cfg, model=model, inputs=inputs, num_items_in_batch=num_items_in_batch
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
        return super().training_step(model, inputs, *args, **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        """Packed batches when ``sample_packing`` is on, else transformers' own loader."""
        if not self.cfg.sample_packing:
            return super().get_train_dataloader()
        return self._packed_dataloader(self.train_dataset, shuffle=True)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        """Packed eval batches when eval packing is on (never reshuffled), else transformers' own."""
        if not self.cfg.packs_eval:
            return super().get_eval_dataloader(eval_dataset)
        if eval_dataset is None or isinstance(eval_dataset, str):  # ftk has one eval set
            eval_dataset = self.eval_dataset
        return self._packed_dataloader(eval_dataset, shuffle=False)

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
            self._tokens_at_last_log, self._time_at_last_log = seen, now
        super().log(logs, start_time)

    def train(self, *args: Any, **kwargs: Any):
        """Train, measuring token throughput from this call on."""
        self._time_at_last_log = time.perf_counter()
        self._tokens_at_last_log = int(self._tokens_seen.item())
        return super().train(*args, **kwargs)
