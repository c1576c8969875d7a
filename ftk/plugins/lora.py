"""LoRA adapters through peft, and plain full fine-tuning when no adapter is configured."""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, get_peft_model

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.hookspecs import hookimpl


def lora_config(cfg: FtkConfig) -> LoraConfig:
    """peft's LoraConfig for the ``lora_*`` keys (``lora_target_linear`` means every linear layer)."""
    if cfg.lora_target_linear:
        targets: Any = "all-linear"
    else:
        targets = cfg.lora_target_modules  # None lets peft choose per architecture
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


@hookimpl
def apply_adapter(cfg: FtkConfig, model: Any) -> Any:
    """Wrap the model with LoRA when ``adapter: lora``; leave it whole for full fine-tuning."""
    if cfg.adapter is None:
        return model
    if cfg.adapter != "lora":
        return None
    try:
        peft_model = get_peft_model(model, lora_config(cfg))
    except ValueError as exc:  # e.g. target modules not found in the model
        raise FtkError(f"lora_target_modules: {exc}") from exc
    if cfg.gradient_checkpointing:
        # Frozen embeddings produce no grad; checkpointed blocks need inputs that require one.
        peft_model.enable_input_require_grads()
    return peft_model
