"""A test plugin that replaces the optimizer and the schedule through the hooks.

Plain SGD (no momentum, no weight decay) at ``LEARNING_RATE`` whatever the config says, halved
every ``HALVE_EVERY`` optimizer steps.  After training it writes ``custom_optimizer.json`` to the
output directory, describing the optimizer and scheduler the trainer actually used.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ftk.core.hookspecs import hookimpl

LEARNING_RATE = 0.05
HALVE_EVERY = 2
REPORT_NAME = "custom_optimizer.json"


@hookimpl
def create_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Plain SGD over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=LEARNING_RATE, momentum=0.0)


@hookimpl
def create_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Halve the learning rate every ``HALVE_EVERY`` steps."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=HALVE_EVERY, gamma=0.5)


@hookimpl
def post_train(cfg, trainer) -> None:
    """Record what the trainer trained with (its optimizer is wrapped by accelerate)."""
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    report = {
        "optimizer": type(optimizer).__name__,
        "momentum": optimizer.defaults["momentum"],
        "scheduler": type(trainer.lr_scheduler).__name__,
    }
    (Path(cfg.output_dir) / REPORT_NAME).write_text(json.dumps(report), encoding="utf-8")
