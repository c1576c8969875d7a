"""Eval loss as the mean over every trained token of the eval set, whatever the batching.

Each batch contributes its summed loss (as the ``compute_loss`` hook returns it) and its
trained-token count; the result divides the totals.  Averaging per-batch means instead would
weigh a token in a short batch more than one in a long batch, so the number would change with
``micro_batch_size`` and packing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from ftk.core.data.collate import PaddingCollator
from ftk.core.data.packing import REAL_TOKENS_KEY, PackedBatchSampler, PackedDataset, PackingCollator
from ftk.core.errors import FtkError
from ftk.core.lm import IGNORE_INDEX, perplexity, trained_token_count

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig
    from ftk.core.hooks import Hooks


@dataclass
class EvalResult:
    """Token-mean eval loss, its perplexity and how many tokens it covers."""

    loss: float
    perplexity: float
    tokens: int

    def as_metrics(self, prefix: str = "eval_") -> dict[str, float]:
        """The result as Trainer-style metrics: ``eval_loss``, ``eval_perplexity``, ``eval_tokens``."""
        return {
            f"{prefix}loss": self.loss,
            f"{prefix}perplexity": self.perplexity,
            f"{prefix}tokens": self.tokens,
        }


def eval_dataloader(
    cfg: FtkConfig,
    dataset: Any,
    pad_token_id: int,
    batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """Batches of the eval set in a fixed order: packed when eval packing is on, else padded."""
    batch_size = batch_size or cfg.eval_batch_size or cfg.micro_batch_size
    if cfg.packs_eval:
        sampler = PackedBatchSampler(
            dataset["length"],
            capacity=cfg.sequence_len,
            micro_batch_size=batch_size,
            seed=cfg.seed,
            rank=rank,
            world_size=world_size,
            shuffle=False,
        )
        return DataLoader(
            PackedDataset(dataset),
            batch_sampler=sampler,
            collate_fn=PackingCollator(pad_token_id=pad_token_id, pad_to_length=cfg.padded_length),
        )
    if world_size > 1:
        dataset = _rank_share(dataset, rank, world_size)
    collate = PaddingCollator(pad_token_id, pad_to_length=cfg.padded_length)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def _rank_share(dataset: Any, rank: int, world_size: int) -> Any:
    """Every ``world_size``-th row from ``rank``, padded to the same row count on every rank.

    Sharded models (ZeRO-3, FSDP) run collectives inside forward, so every rank must run the same
    number of batches; a padding row repeats a real one with every label masked, so it adds nothing.
    """
    rows = list(range(rank, len(dataset), world_size))
    share = dataset.select(rows)
    missing = -(-len(dataset) // world_size) - len(rows)
    if missing <= 0:
        return share
    from datasets import concatenate_datasets

    filler = dataset.select([0] * missing)
    masked = [[IGNORE_INDEX] * len(labels) for labels in filler["labels"]]
    filler = filler.remove_columns("labels").add_column("labels", masked, feature=dataset.features["labels"])
    return concatenate_datasets([share, filler])


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    summed_loss: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    device: torch.device | None = None,
) -> EvalResult:
    """Token-mean loss of ``model`` over ``batches``; ``summed_loss`` returns a batch's summed loss.

    Under torch.distributed the sums and counts of all ranks are added before dividing.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.long, device=device)
    try:
        for batch in batches:
            batch = {key: value for key, value in batch.items() if key != REAL_TOKENS_KEY}
            if device is not None:
                batch = {key: value.to(device) for key, value in batch.items()}
            count = trained_token_count(batch["labels"])
            if int(count) == 0 and not distributed:
                continue  # (under torch.distributed every rank runs every batch: see _rank_share)
            total += summed_loss(model, batch).double()
            tokens += count
    finally:
        model.train(was_training)
    if distributed:
        torch.distributed.all_reduce(total)
        torch.distributed.all_reduce(tokens)
    if int(tokens) == 0:
        raise FtkError("eval set: no trained tokens to evaluate (every label is masked)")
    loss = float(total / tokens)
    return EvalResult(loss=loss, perplexity=perplexity(loss), tokens=int(tokens))


def hook_summed_loss(
    cfg: FtkConfig, hooks: Hooks
) -> Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """A ``summed_loss`` for :func:`evaluate_loss`: the ``compute_loss`` hook's sum."""

    def summed(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        result = hooks.compute_loss(cfg, model, batch)
        if result is None:
            raise FtkError("no plugin computed the loss (every compute_loss hook returned None)")
        return result.summed

    return summed
