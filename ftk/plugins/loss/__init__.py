"""Built-in plugin: the default loss, next-token cross-entropy summed over the trained tokens.

Logits are computed only where the next token is trained, by default chunk by chunk with each
chunk's gradients taken at once (``chunked.py``; ``docs/training.md``).  The core normalises the
sum over the optimizer step and adds the router loss.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.hookspecs import hookimpl
from ftk.core.lm import (
    IGNORE_INDEX,
    LossOutput,
    causal_lm,
    logit_transform,
    trained_position_mask,
    vocab_size,
)
from ftk.core.registry import Register

if TYPE_CHECKING:
    import torch

SECTION = "chunked_cross_entropy"


class ChunkedLossSettings(StrictModel):
    """Top-level keys of the default loss."""

    chunked_cross_entropy: bool = Field(
        True,
        description="Run the output head and the loss over the trained positions in chunks, each "
        "chunk's gradients computed at once, so the logits of a micro-batch never exist whole "
        "(less memory and, on CPU, faster; off: all trained positions' logits at once).",
    )
    chunked_cross_entropy_num_chunks: Annotated[int, Field(gt=0)] | None = Field(
        None,
        description="Chunks the trained positions of a micro-batch are split into (default: "
        "chunks of 16 MiB of float32 logits on CPU, 256 MiB on a GPU, at least hidden-size "
        "positions when the head trains).",
    )


def summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of rows of logits against ``targets``, summed (``IGNORE_INDEX`` rows add 0)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


@lru_cache(maxsize=32)
def _accepts_logits_to_keep(forward_owner: type) -> bool:
    return "logits_to_keep" in inspect.signature(forward_owner.forward).parameters


def summed_loss(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], settings: ChunkedLossSettings | None = None
) -> LossOutput:
    """Forward the micro-batch; the cross-entropy summed over its trained tokens, and their count.

    Chunked unless ``settings`` turn it off; models without ``logits_to_keep`` (or with labels
    that are not (batch, sequence)) get the plain loss over full logits.
    """
    from ftk.plugins.loss.chunked import chunked_summed_cross_entropy, rows_per_chunk

    settings = settings or ChunkedLossSettings()
    labels = inputs["labels"]
    features = {key: value for key, value in inputs.items() if key != "labels"}
    inner = causal_lm(model)
    if labels.dim() != 2 or not _accepts_logits_to_keep(type(inner)):
        outputs = model(**features, use_cache=False)
        targets = labels[..., 1:].reshape(-1).to(outputs.logits.device)
        logits = outputs.logits[..., :-1, :].reshape(-1, outputs.logits.size(-1))
        return LossOutput(summed_cross_entropy(logits, targets), targets.ne(IGNORE_INDEX).sum(), outputs)
    keep = trained_position_mask(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    if not settings.chunked_cross_entropy:
        outputs = model(**features, logits_to_keep=keep, use_cache=False)
        logits = outputs.logits.reshape(-1, outputs.logits.size(-1))
        return LossOutput(summed_cross_entropy(logits, targets), targets.numel(), outputs)
    # The decoder runs as usual (through any DDP/peft wrapper); the head is applied chunk by chunk.
    outputs = model(**features, logits_to_keep=1, output_hidden_states=True, use_cache=False)
    scale, softcap = logit_transform(inner.config)
    hidden = outputs.hidden_states[-1][keep]
    head = inner.get_output_embeddings()
    rows = rows_per_chunk(
        hidden.size(0),
        vocab_size(inner.config),
        hidden.device,
        settings.chunked_cross_entropy_num_chunks,
        min_rows=hidden.size(-1) if any(p.requires_grad for p in head.parameters()) else 1,
    )
    total = chunked_summed_cross_entropy(
        hidden * scale if scale != 1.0 else hidden, targets, head, rows, softcap
    )
    return LossOutput(total, targets.numel(), outputs)


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level ``chunked_cross_entropy`` keys."""
    register(SECTION, ChunkedLossSettings, flat=True)


@hookimpl(trylast=True)
def compute_loss(cfg: FtkConfig, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    """The default loss, asked after every other plugin's."""
    return summed_loss(model, inputs, cfg.section(SECTION))
