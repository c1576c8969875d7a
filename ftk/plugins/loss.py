"""The default loss: cross-entropy averaged over the trained tokens of the whole optimizer step.

Logits are computed only at positions whose next token is trained (transformers'
``logits_to_keep`` with a boolean mask), so the output head and the softmax over a large
vocabulary cost nothing for prompt and padding positions.  The result is exactly the loss over
full logits.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
import torch.nn.functional as F

from ftk.core.hookspecs import hookimpl

IGNORE_INDEX = -100


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
) -> torch.Tensor:
    """Next-token cross-entropy over full logits: summed over trained positions / ``num_items_in_batch``.

    ``labels`` are aligned with the inputs (``-100`` = not trained); position t predicts label t+1.
    Without ``num_items_in_batch`` (evaluation), the mean over this batch's trained tokens.
    """
    shift_logits = logits[..., :-1, :].reshape(-1, logits.size(-1))
    shift_labels = labels[..., 1:].reshape(-1).to(shift_logits.device)
    return _normalise(_summed_cross_entropy(shift_logits, shift_labels), shift_labels, num_items_in_batch)


def _summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def _normalise(
    total: torch.Tensor, targets: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
) -> torch.Tensor:
    if num_items_in_batch is None:
        num_items_in_batch = targets.ne(IGNORE_INDEX).sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def trained_position_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, seq) mask of the positions whose next token is trained."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:].ne(IGNORE_INDEX)
    return mask


@lru_cache(maxsize=32)
def _accepts_logits_to_keep(forward_owner: type) -> bool:
    return "logits_to_keep" in inspect.signature(forward_owner.forward).parameters


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under wrappers (peft's PeftModel, DDP's module)."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


@hookimpl
def compute_loss(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: torch.Tensor | int | None
) -> torch.Tensor:
    """Forward the micro-batch and return its token-mean cross-entropy share of the step's loss."""
    labels = inputs["labels"]
    features = {key: value for key, value in inputs.items() if key != "labels"}
    if labels.dim() == 2 and _accepts_logits_to_keep(type(_causal_lm(model))):
        keep = trained_position_mask(labels)
        outputs = model(**features, logits_to_keep=keep, use_cache=False)
        targets = labels[:, 1:][keep[:, :-1]]
        logits = outputs.logits.reshape(-1, outputs.logits.size(-1))
        return _normalise(_summed_cross_entropy(logits, targets), targets, num_items_in_batch)
    outputs = model(**features, use_cache=False)
    return causal_lm_loss(outputs.logits, labels, num_items_in_batch)
