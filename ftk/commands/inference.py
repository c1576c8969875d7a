"""What ``ftk eval`` and ``ftk generate`` share: which model a folder holds, and loading it for inference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ftk.core.errors import FtkError
from ftk.core.model import load_base_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ftk.core.config.schema import FtkConfig
    from ftk.core.hooks import Hooks

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"


def model_kind(directory: Path, label: str) -> Literal["adapter", "full"]:
    """Whether ``directory`` holds a peft adapter or a full model; ``label`` names it in errors."""
    if not directory.is_dir():
        raise FtkError(f"{label}: {directory} is not a directory")
    if (directory / ADAPTER_CONFIG).is_file():
        return "adapter"
    if (directory / MODEL_CONFIG).is_file():
        return "full"
    raise FtkError(
        f"{label}: {directory} holds neither {ADAPTER_CONFIG} (a peft adapter) nor {MODEL_CONFIG} (a full model)"
    )


def load_inference_model(
    cfg: FtkConfig, hooks: Hooks, tokenizer: PreTrainedTokenizerBase, directory: Path | None, label: str
) -> Any:
    """The model to evaluate or sample from, in eval mode; never the config's adapter.

    ``directory`` None: the base model.  An adapter directory: the base model with that peft
    adapter.  A full model directory: loaded by the same hooks with ``base_model`` set to it.
    """
    if directory is None:
        model = load_base_model(cfg, hooks, tokenizer, "inference")
    elif model_kind(directory, label) == "adapter":
        from peft import PeftModel

        base = load_base_model(cfg, hooks, tokenizer, "inference")
        try:
            model = PeftModel.from_pretrained(base, str(directory))
        except (OSError, ValueError, RuntimeError) as exc:
            raise FtkError(
                f"{label}: cannot load the adapter in {directory} onto {cfg.base_model!r}: "
                f"{type(exc).__name__}: {exc}".replace("\n", " ")
            ) from exc
    else:
        full = cfg.model_copy(update={"base_model": str(directory)})
        model = load_base_model(full, hooks, tokenizer, "inference")
    return model.eval()


def place(model: Any) -> torch.device:
    """Move ``model`` to CUDA when there is one (unless a loader already dispatched it); return where inputs go."""
    if getattr(model, "hf_device_map", None) is None:
        model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return model.get_input_embeddings().weight.device
