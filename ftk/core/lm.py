"""What every causal-LM loss and metric shares: the label convention, the loss's result, the router.

``labels`` are aligned with ``input_ids``; ``IGNORE_INDEX`` marks a position that is not trained,
and position t predicts label t+1.  A loss plugin returns a :class:`LossOutput` (the summed loss
and the number of trained tokens); the core turns it into the step's loss (``ftk.core.trainer``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    """One micro-batch's loss as a loss plugin computes it, before the core normalises it.

    ``summed``: the loss summed over the trained tokens (a scalar tensor).  ``tokens``: how many
    tokens it sums over.  ``outputs``: the model's output, whose ``aux_loss`` the core reads for
    mixture-of-experts models.  ``metrics``: extra scalars to average into the training logs.
    """

    summed: torch.Tensor
    tokens: torch.Tensor | int
    outputs: Any = None
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


def trained_position_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean (batch, seq) mask of the positions whose next token is trained."""
    import torch

    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:].ne(IGNORE_INDEX)
    return mask


def trained_token_count(labels: torch.Tensor) -> torch.Tensor:
    """Number of positions whose next token is trained (the tokens a loss averages over)."""
    return labels[..., 1:].ne(IGNORE_INDEX).sum()


def perplexity(loss: float) -> float:
    """``exp(loss)``, infinite where that overflows a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def causal_lm(model: torch.nn.Module) -> Any:
    """The transformers model under wrappers (peft's PeftModel, DDP's ``module``)."""
    inner = getattr(model, "module", model)
    get_base_model = getattr(inner, "get_base_model", None)
    return get_base_model() if get_base_model is not None else inner


def text_config(model_config: Any) -> Any:
    """The language-model part of a model config (itself, unless the model is multimodal)."""
    return model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config


def vocab_size(model_config: Any) -> int:
    """Width of the model's logits (the text config's ``vocab_size``)."""
    return int(text_config(model_config).vocab_size)


def logit_transform(model_config: Any) -> tuple[float, float | None]:
    """What a family does to its logits after the output head, as (input scale, softcap).

    Granite divides the logits by ``logits_scaling``, Falcon-H1 multiplies them by
    ``lm_head_multiplier`` (both equal to scaling the head's input); Gemma 2 and 3 cap them with
    ``final_logit_softcapping``.
    """
    text = text_config(model_config)
    scale = 1.0
    if getattr(text, "logits_scaling", None):
        scale /= float(text.logits_scaling)
    if getattr(text, "lm_head_multiplier", None):
        scale *= float(text.lm_head_multiplier)
    softcap = getattr(text, "final_logit_softcapping", None)
    return scale, float(softcap) if softcap else None


def has_router(model_config: Any) -> bool:
    """Whether a model config describes a mixture-of-experts model that can return a router loss."""
    return hasattr(model_config, "output_router_logits") and hasattr(model_config, "router_aux_loss_coef")


def router_aux_loss_coef(configured: float | None, model_config: Any) -> float:
    """Weight of the router loss: ``configured`` if set, else the model's own (0 without a router)."""
    if not has_router(model_config):
        return 0.0
    if configured is not None:
        return float(configured)
    return float(model_config.router_aux_loss_coef or 0.0)
