"""The default optimizers (AdamW, fused AdamW, SGD, Adafactor) and warmup + decay schedules."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler
from transformers.optimization import Adafactor

from ftk.core.config.schema import FtkConfig
from ftk.core.hookspecs import hookimpl


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and not decayed (biases, norms, 1-D)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


@hookimpl
def create_optimizer(cfg: FtkConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer ``cfg.optimizer`` names over the model's trainable parameters."""
    groups = parameter_groups(model, cfg.weight_decay)
    lr = cfg.learning_rate
    if cfg.optimizer in ("adamw_torch", "adamw_torch_fused"):
        return torch.optim.AdamW(
            groups,
            lr=lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
            fused=cfg.optimizer == "adamw_torch_fused" or None,
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)


def warmup_steps(cfg: FtkConfig, num_training_steps: int) -> int:
    """Warmup length in optimizer steps, from ``warmup_steps`` or ``warmup_ratio`` (default none)."""
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    if cfg.warmup_ratio is not None:
        return math.ceil(num_training_steps * cfg.warmup_ratio)
    return 0


@hookimpl
def create_scheduler(
    cfg: FtkConfig, optimizer: torch.optim.Optimizer, num_training_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup, then cosine or linear decay to zero, or a constant rate."""
    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps(cfg, num_training_steps),
        num_training_steps=num_training_steps,
    )
