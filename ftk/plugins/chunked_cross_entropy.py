"""Cross-entropy over a large vocabulary without ever holding the whole logits tensor.

The trained positions' final hidden states are split into chunks; each chunk goes through the
output head and the cross-entropy under activation checkpointing, so its logits are freed as soon
as its loss is known and recomputed, one chunk at a time, in the backward pass.  Peak memory for
the logits falls from (trained tokens x vocabulary) to (one chunk x vocabulary); the loss and
gradients are those of the plain computation (up to float summation order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    softcap: float | None,
) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_summed_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    num_chunks: int,
    softcap: float | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` (rows of logits) against ``targets``, chunk by chunk.

    ``hidden`` is (N, hidden_size), ``targets`` (N,); ``head`` maps hidden states to logits (the
    model's output embedding, whatever wraps it); ``softcap`` applies Gemma-style final-logit
    soft-capping.  With gradients enabled each chunk is checkpointed: its logits are recomputed
    in backward instead of stored.
    """
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for hidden_chunk, target_chunk in zip(hidden.chunk(num_chunks), targets.chunk(num_chunks), strict=True):
        if torch.is_grad_enabled():
            total = total + checkpoint(
                _chunk_loss, hidden_chunk, target_chunk, head, softcap, use_reentrant=False
            )
        else:
            total = total + _chunk_loss(hidden_chunk, target_chunk, head, softcap)
    return total
