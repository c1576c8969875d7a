"""A third-party plugin that adds one of each named choice, selected by name in a config.

* ``optimizer: plain_sgd``: SGD without momentum or weight decay at the config's learning rate;
* ``lr_scheduler: halving``: the learning rate halves every ``HALVE_EVERY`` optimizer steps;
* ``adapter: norms_only``: only the RMSNorm weights train (everything else frozen);
* ``report_to: [jsonl]``: every log entry is appended to ``<output_dir>/TRACKER_FILE``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

from ftk.core.hookspecs import hookimpl

HALVE_EVERY = 2
TRACKER_FILE = "tracker.jsonl"


def plain_sgd(cfg, groups, model):
    return torch.optim.SGD(
        [p for group in groups for p in group["params"]], lr=cfg.learning_rate, momentum=0.0
    )


def halving(cfg, optimizer, num_training_steps, num_warmup_steps):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=HALVE_EVERY, gamma=0.5)


def norms_only(cfg, model, new_token_ids):
    for name, param in model.named_parameters():
        param.requires_grad_("norm" in name)
    return model


class JsonlTracker(TrainerCallback):
    def __init__(self, cfg) -> None:
        self.path = Path(cfg.output_dir) / TRACKER_FILE

    def on_log(self, args, state, control, logs=None, **kwargs):
        with self.path.open("a") as out:
            out.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")


@hookimpl
def register_optimizers(register):
    register("plain_sgd", plain_sgd)


@hookimpl
def register_schedulers(register):
    register("halving", halving)


@hookimpl
def register_adapters(register):
    register("norms_only", norms_only)


@hookimpl
def register_trackers(register):
    register("jsonl", JsonlTracker)


REPORT_FILE = "registrations.json"


@hookimpl
def post_train(cfg, trainer):
    """Record what the trainer trained with (its optimizer is wrapped by accelerate)."""
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    report = {
        "optimizer": type(optimizer).__name__,
        "momentum": optimizer.defaults["momentum"],
        "scheduler": type(trainer.lr_scheduler).__name__,
    }
    (Path(cfg.output_dir) / REPORT_FILE).write_text(json.dumps(report))
