"""``transformers.Trainer`` whose loss, optimizer and schedule come from plugins.

One optimizer step, in order:

1. **Micro-batches.**  Trainer takes ``gradient_accumulation_steps`` micro-batches (packed rows
   when ``sample_packing``, else padded ones) and counts the trained tokens of all of them,
   over every process: ``num_items_in_batch``.
2. **Loss, per micro-batch** (:meth:`FtkTrainer.compute_loss`).  The ``compute_loss`` hook runs
   the forward pass and returns the summed loss and its token count; the core divides the sum by
   ``num_items_in_batch`` (times the process count, since DDP averages gradients), so the step's
   loss is the mean over every trained token of the step, whatever the split into micro-batches.
   A mixture-of-experts model adds ``coef x router loss / micro-batches per step``.  Then
   backward; the real (non-padding) tokens are counted for throughput.
3. **Clipping.**  Gradients are clipped to ``max_grad_norm``; the norm is kept.
4. **Update.**  ``optimizer.step()``, ``lr_scheduler.step()``, gradients zeroed; the optimizer
   and the schedule are the registered ones ``optimizer`` and ``lr_scheduler`` name.
5. **After the step** (callbacks, ``on_step_end``): the run guard stops on a non-finite loss or
   norm (nothing saved) or on a signal (save, then stop); then Trainer logs (loss, grad norm,
   the learning rate this step used, tokens/s and token count over every process, plugin
   metrics), evaluates (token-mean ``eval_loss``) and saves a checkpoint (staged, then renamed:
   ``ftk.integrations.transformers_trainer``; a full disk is an error naming the size needed).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from ftk.core.data.packing import REAL_TOKENS_KEY, PackedBatchSampler, PackedDataset, PackingCollator
from ftk.core.errors import FtkError
from ftk.core.evaluate import eval_dataloader, evaluate_loss, hook_summed_loss
from ftk.core.lm import causal_lm, has_router, router_aux_loss_coef
from ftk.core.run_guard import RunGuard
from ftk.core.step_metrics import StepMetrics
from ftk.integrations.transformers_trainer import StagedCheckpointTrainer

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig
    from ftk.core.hooks import Hooks
    from ftk.core.registry import Registry


class EpochDataLoader(DataLoader):
    """A DataLoader whose ``set_epoch`` (called by Trainer each epoch) reaches its batch sampler."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]


def micro_batch_loss(
    cfg: FtkConfig,
    hooks: Hooks,
    model: torch.nn.Module,
    inputs: dict[str, Any],
    num_items_in_batch: torch.Tensor | int | None,
    metrics: StepMetrics | None = None,
) -> torch.Tensor:
    """A micro-batch's share of its optimizer step's loss: the hook's sum / ``num_items_in_batch``.

    Without ``num_items_in_batch``, the mean over this micro-batch's own trained tokens.  In
    training, a mixture-of-experts model adds its share of the router loss (reported to
    ``metrics`` as ``router_aux_loss``).
    """
    inputs = {key: value for key, value in inputs.items() if key != REAL_TOKENS_KEY}
    config = causal_lm(model).config
    coef = router_aux_loss_coef(cfg.router_aux_loss_coef, config) if model.training else 0.0
    if has_router(config):
        inputs["output_router_logits"] = coef > 0
    result = hooks.compute_loss(cfg, model, inputs)
    if result is None:
        raise FtkError("no plugin computed the loss (every compute_loss hook returned None)")
    if num_items_in_batch is None:  # this micro-batch alone (at least 1: an all-masked batch adds 0)
        count: torch.Tensor | int = result.tokens
        count = count.clamp(min=1) if torch.is_tensor(count) else max(int(count), 1)
    else:
        count = num_items_in_batch
    loss = result.summed.float() / (count.to(result.summed.device) if torch.is_tensor(count) else count)
    if metrics is not None:
        for name, value in result.metrics.items():
            metrics.add(name, value)
    if coef > 0:
        aux = getattr(result.outputs, "aux_loss", None)
        if aux is None:
            raise FtkError(f"router_aux_loss_coef: {config.model_type!r} returned no router loss (aux_loss)")
        if metrics is not None:
            metrics.add("router_aux_loss", aux)
        # The cross-entropy is already a share of the whole step; the router loss is a mean per
        # micro-batch, so each micro-batch adds its share of coef x that mean.
        loss = loss + coef * aux.to(loss.device) / micro_batches_per_step(cfg)
    return loss


def micro_batches_per_step(cfg: FtkConfig) -> int:
    """Micro-batches whose losses are summed into one optimizer step, over every process."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return cfg.gradient_accumulation_steps * (torch.distributed.get_world_size() if distributed else 1)


class FtkTrainer(StagedCheckpointTrainer):
    """A Trainer whose extension points are ftk's hooks and registries rather than subclassing."""

    # The loss returned by compute_loss is already divided by the step's trained-token count.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, cfg: FtkConfig, hooks: Hooks, registry: Registry, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cfg = cfg
        self.hooks = hooks
        self.registry = registry
        # Ask Trainer to count the trained tokens of each whole optimizer step (num_items_in_batch).
        self.model_accepts_loss_kwargs = True
        # Real tokens this process trained on since train() began; with the whole run's count at
        # the checkpoint resumed from, every process's counts sum to the run's (job_tokens).
        self._tokens_seen = torch.zeros((), dtype=torch.long)
        self._tokens_before = 0
        self._tokens_at_last_log = 0
        self._time_at_last_log: float | None = None
        self.step_metrics = StepMetrics()
        self._step_loss = torch.zeros(())
        self.guard = RunGuard(self._step_health)
        self.add_callback(self.guard)
        self.add_callback(_TokenCounterRestore(self))
        #: The learning rate the last optimizer step used (read right before ``optimizer.step()``).
        self.step_learning_rate: float | None = None
        self.add_callback(_StepLearningRate(self))

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """Step 2: the micro-batch's share of the step's token-mean loss (:func:`micro_batch_loss`)."""
        loss = micro_batch_loss(self.cfg, self.hooks, model, inputs, num_items_in_batch, self.step_metrics)
        if (
            num_items_in_batch is not None
            and self.args.average_tokens_across_devices
            and self.args.world_size > 1
        ):
            # num_items_in_batch counts every rank's tokens; gradients are averaged over ranks.
            loss = loss * self.args.world_size
        # Evaluation asks for outputs; ftk evaluates the loss only.
        return (loss, {}) if return_outputs else loss

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
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

    def _step_health(self) -> tuple[float, float | None]:
        """The finished step's loss and gradient norm, fetched in one transfer; resets them."""
        norm, self.last_grad_norm = self.last_grad_norm, None
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
        sampler = PackedBatchSampler(
            self.train_dataset["length"],  # type: ignore[index]
            capacity=self.cfg.sequence_len,
            micro_batch_size=self.cfg.micro_batch_size,
            seed=self.cfg.seed,
            rank=self.args.process_index,
            world_size=self.args.world_size,
            shuffle=True,
        )
        return EpochDataLoader(
            PackedDataset(self.train_dataset),
            batch_sampler=sampler,
            collate_fn=PackingCollator(
                pad_token_id=self.processing_class.pad_token_id,  # type: ignore[union-attr]
                pad_to_length=self.cfg.padded_length,
            ),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Mean loss over every trained token of the eval set, with perplexity and token count."""
        if eval_dataset is None or isinstance(eval_dataset, str):  # ftk has one eval set
            eval_dataset = self.eval_dataset
        if eval_dataset is None:
            raise FtkError("no eval set: set val_set_size or test_datasets")
        loader = eval_dataloader(
            self.cfg,
            eval_dataset,
            self.processing_class.pad_token_id,  # type: ignore[union-attr]
            batch_size=self.args.per_device_eval_batch_size,
            rank=self.args.process_index,
            world_size=self.args.world_size,
        )

        hook_sum = hook_summed_loss(self.cfg, self.hooks)

        def summed(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with self.autocast_smart_context_manager():
                return hook_sum(model, batch)

        start = time.perf_counter()
        result = evaluate_loss(self.model, loader, summed, device=self.args.device)  # type: ignore[arg-type]
        metrics: dict[str, float] = result.as_metrics(prefix=f"{metric_key_prefix}_")
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """Step 4's optimizer: the registered one ``optimizer`` names, over the trainable parameters."""
        if self.optimizer is None:
            self.optimizer = build_optimizer(self.cfg, self.registry, model or self.model)  # type: ignore[arg-type]
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        """Step 4's schedule: the registered one ``lr_scheduler`` names."""
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            self.lr_scheduler = build_scheduler(self.cfg, self.registry, optimizer, num_training_steps)
            self.mark_scheduler_created()
        return self.lr_scheduler

    def job_tokens(self) -> int:
        """The real tokens trained on so far by every process of the run (one small all-reduce).

        Every process must call it at the same point, as Trainer calls ``log`` and saves.
        """
        count = self._tokens_seen
        if (
            self.args.world_size > 1
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            count = count.to(self.args.device, copy=True)
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.SUM)
        return self._tokens_before + int(count.item())

    def before_checkpoint(self) -> None:
        """Record the run's exact token count in the trainer state the checkpoint saves."""
        self.state.num_input_tokens_seen = self.job_tokens()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``tokens_per_second``, ``num_tokens`` and the plugins' metrics to training log entries.

        ``learning_rate`` is the rate the logged step's update used (not the next step's);
        ``num_tokens`` and ``tokens_per_second`` count the tokens of every process.
        """
        if "loss" in logs:
            if self.step_learning_rate is not None:
                logs["learning_rate"] = self.step_learning_rate
            now = time.perf_counter()
            seen = self.job_tokens()
            if self._time_at_last_log is not None and now > self._time_at_last_log:
                rate = (seen - self._tokens_at_last_log) / (now - self._time_at_last_log)
                logs["tokens_per_second"] = round(rate, 1)
            logs["num_tokens"] = seen
            self.state.num_input_tokens_seen = seen
            self._tokens_at_last_log, self._time_at_last_log = seen, now
            logs.update({name: round(value, 6) for name, value in self.step_metrics.pop_means().items()})
        super().log(logs, start_time)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """Train, counting tokens and measuring throughput from this call on (or from the checkpoint's count)."""
        self._tokens_seen.zero_()
        self._tokens_before = self._tokens_at_last_log = 0
        self._time_at_last_log = time.perf_counter()
        return super().train(*args, **kwargs)


def build_optimizer(cfg: FtkConfig, registry: Registry, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The registered optimizer ``cfg.optimizer`` names, over the trainable parameters of ``model``."""
    groups = parameter_groups(model, cfg.weight_decay)
    if not groups:
        raise FtkError("optimizer: the model has no trainable parameters")
    return registry.lookup("optimizers", cfg.optimizer).build(cfg, groups, model)


def build_scheduler(cfg: FtkConfig, registry: Registry, optimizer: Any, num_training_steps: int) -> Any:
    """The registered schedule ``cfg.lr_scheduler`` names, over ``num_training_steps`` with the warmup of ``cfg``."""
    build = registry.lookup("schedulers", cfg.lr_scheduler).build
    return build(cfg, optimizer, num_training_steps, warmup_steps(cfg, num_training_steps))


def warmup_steps(cfg: FtkConfig, num_training_steps: int) -> int:
    """Warmup length in optimizer steps: ``warmup_steps``, or ``ceil(T * warmup_ratio)``, or 0.

    The product is rounded to 9 digits before the ceiling, so that 0.1 * 30 is 3 steps, not 4.
    """
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    if cfg.warmup_ratio is not None:
        return math.ceil(round(num_training_steps * cfg.warmup_ratio, 9))
    return 0


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed (matrices) and not decayed (biases, norms, 1-D) groups."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


class _StepLearningRate(TrainerCallback):
    """Keeps the learning rate each optimizer step runs at, read before the update and the schedule's step."""

    def __init__(self, trainer: FtkTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = self.trainer.optimizer
        if optimizer is not None and optimizer.param_groups:
            self.trainer.step_learning_rate = float(optimizer.param_groups[0]["lr"])


class _TokenCounterRestore(TrainerCallback):
    """On resume, continue the run's token count from the checkpoint's trainer state."""

    def __init__(self, trainer: FtkTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        seen = int(state.num_input_tokens_seen or 0)  # the whole run's count (0 when starting afresh)
        self.trainer._tokens_before = self.trainer._tokens_at_last_log = seen
