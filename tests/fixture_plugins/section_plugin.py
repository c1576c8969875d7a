"""A test plugin that adds a config section and replaces the loss (label smoothing)."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from ftk.core.config.schema import StrictModel
from ftk.core.hookspecs import hookimpl
from ftk.core.lm import LossOutput

__version__ = "1.2.3"


class SmoothingSection(StrictModel):
    """Config section ``smoothing:``."""

    epsilon: float = Field(0.1, ge=0.0, le=1.0)
    enabled: bool = True


@hookimpl
def register_config_sections(register):
    register("smoothing", SmoothingSection)


@hookimpl
def compute_loss(cfg, model, inputs):
    section = cfg.section("smoothing")
    if section is None or not section.enabled:
        return None
    labels = inputs["labels"]
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(
        shift_logits, shift_labels, ignore_index=-100, reduction="sum", label_smoothing=section.epsilon
    )
    return LossOutput(total, shift_labels.ne(-100).sum())
