"""The default loss: cross-entropy averaged over the trained tokens of the whole optimizer step.

Logits are computed only at positions whose next token is trained, so the output head and the
softmax over a large vocabulary cost nothing for prompt and padding positions.  By default
(``chunked_cross_entropy``) those positions go through the head in chunks whose gradients are
computed on the way, so the logits of a whole micro-batch never exist at once
(``ftk.plugins.chunked_cross_entropy``); with it off, transformers' ``logits_to_keep`` with a
boolean mask gives them all at once.  Either way the result is the loss over full logits.

Mixture-of-experts models also get their router load-balancing loss in training (not in
evaluation): ``coef * aux_loss`` with ``coef`` from ``router_aux_loss_coef`` (default: the model's
own), scaled so that one optimizer step adds ``coef`` times the mean aux loss of its micro-batches,
and reported as the ``router_aux_loss`` metric.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ftk.core.errors import FtkError
from ftk.core.hookspecs import hookimpl
from ftk.plugins.chunked_cross_entropy import chunked_summed_cross_entropy, rows_per_chunk

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig
    from ftk.core.step_metrics import StepMetrics

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
    return normalise(_summed_cross_entropy(shift_logits, shift_labels), shift_labels, num_items_in_batch)


def _summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def normalise(
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


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under wrappers (peft's PeftModel, DDP's module)."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def text_config(model_config: Any) -> Any:
    """The language-model part of a model config (itself, unless the model is multimodal)."""
    return model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config


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


def vocab_size(model_config: Any) -> int:
    """Width of the model's logits (the text config's ``vocab_size``)."""
    return int(text_config(model_config).vocab_size)


def has_router(model_config: Any) -> bool:
    """Whether a model config describes a mixture-of-experts model that can return a router loss."""
    return hasattr(model_config, "output_router_logits") and hasattr(model_config, "router_aux_loss_coef")


def router_aux_loss_coef(cfg: FtkConfig | None, model_config: Any) -> float:
    """Weight of the router loss: ``router_aux_loss_coef`` if set, else the model's own (0 without a router)."""
    if not has_router(model_config):
        return 0.0
    if cfg is not None and cfg.router_aux_loss_coef is not None:
        return float(cfg.router_aux_loss_coef)
    return float(model_config.router_aux_loss_coef or 0.0)


def micro_batches_per_step(cfg: FtkConfig | None) -> int:
    """Micro-batches whose losses are summed into one optimizer step, over every process."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    return (cfg.gradient_accumulation_steps if cfg is not None else 1) * world


def request_router_loss(
    cfg: FtkConfig | None, config: Any, model: torch.nn.Module, features: dict[str, Any]
) -> float:
    """The router-loss coefficient for this forward (0 in eval or when off); asks the model for it.

    Sets ``output_router_logits`` in ``features`` for mixture-of-experts models.
    """
    aux_coef = router_aux_loss_coef(cfg, config) if model.training else 0.0
    if has_router(config):
        features["output_router_logits"] = aux_coef > 0
    return aux_coef


def add_router_loss(
    loss: torch.Tensor,
    outputs: Any,
    aux_coef: float,
    config: Any,
    cfg: FtkConfig | None,
    metrics: StepMetrics | None,
) -> torch.Tensor:
    """``loss`` plus this micro-batch's share of ``aux_coef`` x the router loss (reported to ``metrics``)."""
    if aux_coef <= 0:
        return loss
    aux = getattr(outputs, "aux_loss", None)
    if aux is None:
        raise FtkError(f"router_aux_loss_coef: {config.model_type!r} returned no router loss (aux_loss)")
    aux = aux.to(loss.device)
    if metrics is not None:
        metrics.add("router_aux_loss", aux)
    # The cross-entropy is already a share of the whole step (num_items_in_batch); the router
    # loss is a per-micro-batch mean, so each micro-batch adds its share of coef * mean.
    return loss + aux_coef * aux / micro_batches_per_step(cfg)


def compute_loss(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: torch.Tensor | int | None,
    cfg: FtkConfig | None = None,
    metrics: StepMetrics | None = None,
) -> torch.Tensor:
    """Forward the micro-batch and return its share of the step's loss (the default loss).

    That is the token-mean cross-entropy, plus in training the router loss of a mixture-of-experts
    model (also reported to ``metrics``).  Without ``cfg`` the router loss uses the model's own
    coefficient and counts one micro-batch per optimizer step.
    """
    labels = inputs["labels"]
    features = {key: value for key, value in inputs.items() if key != "labels"}
    config = causal_lm(model).config
    aux_coef = request_router_loss(cfg, config, model, features)
    chunked = cfg is None or cfg.chunked_cross_entropy
    if chunked and labels.dim() == 2 and _accepts_logits_to_keep(type(causal_lm(model))):
        # The decoder runs as usual (through any DDP/peft wrapper); the head is applied chunk by chunk.
        keep = trained_position_mask(labels)
        outputs = model(**features, logits_to_keep=1, output_hidden_states=True, use_cache=False)
        targets = labels[:, 1:][keep[:, :-1]]
        scale, softcap = logit_transform(config)
        hidden = outputs.hidden_states[-1][keep]
        head = causal_lm(model).get_output_embeddings()
        rows = rows_per_chunk(
            hidden.size(0),
            vocab_size(config),
            hidden.device,
            cfg.chunked_cross_entropy_num_chunks if cfg is not None else None,
            min_rows=hidden.size(-1) if any(p.requires_grad for p in head.parameters()) else 1,
        )
        total = chunked_summed_cross_entropy(
            hidden * scale if scale != 1.0 else hidden, targets, head, rows, softcap=softcap
        )
        loss = normalise(total, targets, num_items_in_batch)
    elif labels.dim() == 2 and _accepts_logits_to_keep(type(causal_lm(model))):
        keep = trained_position_mask(labels)
        outputs = model(**features, logits_to_keep=keep, use_cache=False)
        targets = labels[:, 1:][keep[:, :-1]]
        logits = outputs.logits.reshape(-1, outputs.logits.size(-1))
        loss = normalise(_summed_cross_entropy(logits, targets), targets, num_items_in_batch)
    else:
        outputs = model(**features, use_cache=False)
        loss = causal_lm_loss(outputs.logits, labels, num_items_in_batch)
    return add_router_loss(loss, outputs, aux_coef, config, cfg, metrics)


@hookimpl(specname="compute_loss")
def compute_loss_hook(
    cfg: FtkConfig,
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: torch.Tensor | int | None,
    metrics: StepMetrics,
) -> torch.Tensor:
    """The ``compute_loss`` hook: :func:`compute_loss` with the run's config and step metrics.

    (pluggy passes only parameters without defaults, so the hook takes every argument it needs.)
    """
    return compute_loss(model, inputs, num_items_in_batch, cfg=cfg, metrics=metrics)
