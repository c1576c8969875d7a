"""Cross-entropy over a large vocabulary, chunk by chunk, with its gradients computed on the way.

The trained positions' final hidden states are split into chunks of rows.  For each chunk the
output head, the softmax and the cross-entropy run forward *and backward* at once (inside the
forward pass), keeping only the gradient with respect to the chunk's hidden states (and to any
trainable parameter of the head); the chunk's logits are freed before the next chunk starts.
The backward pass then only scales those stored gradients.  So:

* peak memory for the logits is one chunk x vocabulary instead of trained tokens x vocabulary;
* nothing is recomputed (each chunk's logits are computed once, as in the plain loss);
* small chunks reuse the same memory step after step.  On CPU this is most of the gain: passes
  over new multi-hundred-megabyte logits tensors every step cost more than the arithmetic
  (``docs/benchmarks.md``, "Packed rows on CPU").

Loss and gradients equal those of the plain computation up to float summation order.  Heads
whose parameters are sharded by DeepSpeed ZeRO-3 or FSDP are gathered by hooks around their
forward, so for those every chunk is instead checkpointed (recomputed in backward through the
module's own hooks).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ftk.core.lm import IGNORE_INDEX

# Float32 logits per chunk.  On CPU, 16 MiB blocks (half a typical 32 MiB last-level cache) were
# the fastest measured; on a GPU the caching allocator reuses memory anyway and bigger matrix
# products run closer to peak.
CPU_CHUNK_BYTES = 16 * 2**20
GPU_CHUNK_BYTES = 256 * 2**20


def rows_per_chunk(
    num_rows: int,
    vocab_size: int,
    device: torch.device,
    num_chunks: int | None = None,
    min_rows: int = 1,
) -> int:
    """How many trained positions go through the head at once.

    With ``num_chunks`` the rows are split into that many chunks; otherwise a chunk holds as many
    rows as fit a fixed budget of float32 logits (16 MiB on CPU, 256 MiB on an accelerator), and
    at least ``min_rows``.  When the head itself trains, every chunk adds a gradient the size of
    the head's weight (vocabulary x hidden size), so callers pass the hidden size as
    ``min_rows``: a chunk's logits are then at least as large as that gradient, whose
    accumulation would otherwise cost more than the chunk's arithmetic.
    """
    if num_chunks:
        return max(1, math.ceil(num_rows / num_chunks))
    budget = CPU_CHUNK_BYTES if device.type == "cpu" else GPU_CHUNK_BYTES
    return max(1, min_rows, budget // (vocab_size * 4))


def head_is_sharded(head: torch.nn.Module) -> bool:
    """Whether the head's parameters are shards gathered by hooks (DeepSpeed ZeRO-3, FSDP2)."""
    for parameter in head.parameters():
        if hasattr(parameter, "ds_id") or type(parameter).__name__ == "DTensor":
            return True
        if type(getattr(parameter, "data", None)).__name__ == "DTensor":
            return True
    return False


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


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy whose gradients are computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, targets, head, rows, softcap, *parameters):  # type: ignore[override]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        hidden_grad = torch.zeros_like(hidden) if hidden.requires_grad else None
        # Chunk gradients of the head's own parameters are summed in float32, then cast once.
        parameter_grads = [torch.zeros_like(p, dtype=torch.float32) for p in parameters]
        for start in range(0, hidden.size(0), rows):
            with torch.enable_grad():
                chunk = hidden[start : start + rows].detach().requires_grad_(hidden.requires_grad)
                loss = _chunk_loss(chunk, targets[start : start + rows], head, softcap)
                wrt = ([chunk] if hidden.requires_grad else []) + list(parameters)
                grads = torch.autograd.grad(loss, wrt, allow_unused=True) if wrt else ()
            total += loss.detach()
            if hidden_grad is not None:
                hidden_grad[start : start + rows] = grads[0]
                grads = grads[1:]
            for accumulated, grad in zip(parameter_grads, grads, strict=True):
                if grad is not None:
                    accumulated += grad
        ctx.save_for_backward(
            hidden_grad if hidden_grad is not None else torch.empty(0),
            *(g.to(p.dtype) for g, p in zip(parameter_grads, parameters, strict=True)),
        )
        ctx.hidden_requires_grad = hidden_grad is not None
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        hidden_grad, *parameter_grads = ctx.saved_tensors
        scaled_hidden = hidden_grad * grad_total.to(hidden_grad.dtype) if ctx.hidden_requires_grad else None
        scaled = [g * grad_total.to(g.dtype) for g in parameter_grads]
        return (scaled_hidden, None, None, None, None, *scaled)


def chunked_summed_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Module,
    rows: int,
    softcap: float | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of ``head(hidden)`` (rows of logits) against ``targets``, ``rows`` at a time.

    ``hidden`` is (N, hidden_size), ``targets`` (N,); ``head`` is the model's output embedding
    (whatever wraps it: a LoRA layer, peft's trainable-token rows); ``softcap`` applies
    Gemma-style final-logit soft-capping.  With gradients enabled, the gradients for ``hidden``
    and the head's trainable parameters are computed chunk by chunk during this call (see the
    module docstring); a sharded head gets checkpointed chunks instead.
    """
    if not torch.is_grad_enabled() or head_is_sharded(head):
        # No gradients: a plain sum.  A sharded head: each chunk checkpointed, so that backward
        # recomputes it through the head's own forward (and the hooks that gather its shards).
        checkpointed = torch.is_grad_enabled()
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), rows):
            chunk = (hidden[start : start + rows], targets[start : start + rows], head, softcap)
            if checkpointed:
                total = total + checkpoint(_chunk_loss, *chunk, use_reentrant=False)
            else:
                total = total + _chunk_loss(*chunk)
        return total
    trainable = [p for p in head.parameters() if p.requires_grad]
    return _ChunkedLinearCrossEntropy.apply(hidden, targets, head, rows, softcap, *trainable)
