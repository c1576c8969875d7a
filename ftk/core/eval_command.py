"""``ftk eval``: the token-mean loss and perplexity of a model on a config's eval set.

The model is the base model as the loading hooks give it (the adapter hook is not applied: the
base is evaluated as loaded), or, with ``--adapter DIR``, what DIR holds: a peft adapter
(``adapter_config.json``) put on that base model, or a full model (``config.json``: a full
fine-tune's output, a merged model) loaded by the same hooks in place of ``base_model``.  When DIR
holds a tokenizer it is used instead of the config's, so tokens added in training match.

The loaders here are shared with ``ftk generate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from transformers import PreTrainedTokenizerBase

from ftk.core.config.schema import FtkConfig
from ftk.core.data.pipeline import prepare_data
from ftk.core.errors import FtkError
from ftk.core.evaluate import EvalResult, eval_dataloader, evaluate_loss, hook_summed_loss
from ftk.core.model import load_base_model, load_inference_tokenizer
from ftk.core.plugins import FtkPluginManager

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
    cfg: FtkConfig, hooks: Any, tokenizer: PreTrainedTokenizerBase, directory: Path | None, label: str
) -> Any:
    """The model to evaluate or sample from, in eval mode; never the config's adapter hook.

    ``directory`` None: the base model as the loading hooks give it.  An adapter directory: that
    base model with the peft adapter.  A full model directory: loaded by the same hooks with
    ``base_model`` set to it.
    """
    if directory is None:
        model = load_base_model(cfg, hooks, tokenizer)
    elif model_kind(directory, label) == "adapter":
        from peft import PeftModel

        base = load_base_model(cfg, hooks, tokenizer)
        try:
            model = PeftModel.from_pretrained(base, str(directory))
        except (OSError, ValueError, RuntimeError) as exc:
            raise FtkError(
                f"{label}: cannot load the adapter in {directory} onto {cfg.base_model!r}: "
                f"{type(exc).__name__}: {exc}".replace("\n", " ")
            ) from exc
    else:
        model = load_base_model(cfg.model_copy(update={"base_model": str(directory)}), hooks, tokenizer)
    return model.eval()


def inference_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def place(model: Any) -> torch.device:
    """Move ``model`` to :func:`inference_device` (unless a loader already dispatched it); return where inputs go."""
    if getattr(model, "hf_device_map", None) is None:
        model.to(inference_device())
    return model.get_input_embeddings().weight.device


def require_eval_set(cfg: FtkConfig) -> None:
    """Fail early, before any tokenization, when the config defines no eval set."""
    if not cfg.val_set_size and not cfg.test_datasets:
        raise FtkError(
            "val_set_size, test_datasets: the config has no eval set; set val_set_size "
            "(a share < 1 or a row count) or list test_datasets"
        )


def run_eval(
    cfg: FtkConfig,
    manager: FtkPluginManager,
    adapter: str | Path | None = None,
    batch_size: int | None = None,
    console: Console | None = None,
) -> EvalResult:
    """Token-mean loss of the base model (or of ``adapter``) over the eval set of ``cfg``.

    ``batch_size`` overrides ``eval_batch_size``; the result does not depend on it.  Progress goes
    to ``console`` (stderr by default).
    """
    console = console or Console(stderr=True)
    require_eval_set(cfg)
    if batch_size is not None and batch_size <= 0:
        raise FtkError(f"--batch-size: must be a positive number (got {batch_size})")
    hooks = manager.hook
    directory = Path(adapter) if adapter is not None else None
    if directory is not None:
        model_kind(directory, "--adapter")  # a wrong path fails before the data is prepared
    tokenizer = load_inference_tokenizer(cfg, hooks, directory)
    data = prepare_data(cfg, tokenizer, manager.collect_registrations())
    assert data.eval is not None  # require_eval_set guarantees a split or test_datasets
    model = load_inference_model(cfg, hooks, tokenizer, directory, "--adapter")
    device = place(model)
    what = "base model" if directory is None else f"{model_kind(directory, '--adapter')} {directory}"
    console.print(
        f"eval: {len(data.eval):,} rows{', packed' if cfg.packs_eval else ''}; {what}; device {device}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    batches = eval_dataloader(cfg, data.eval, tokenizer.pad_token_id, batch_size=batch_size)
    return evaluate_loss(model, batches, hook_summed_loss(cfg, hooks), device)


def result_line(result: EvalResult) -> str:
    """``eval loss 4.1234, perplexity 61.8, over 12,345 tokens``."""
    return f"eval loss {result.loss:.4f}, perplexity {result.perplexity:,.1f}, over {result.tokens:,} tokens"


def result_json(result: EvalResult) -> str:
    """One JSON object: ``eval_loss``, ``perplexity`` (null when it overflows) and ``eval_tokens``."""
    finite = result.perplexity if result.perplexity != float("inf") else None
    return json.dumps({"eval_loss": result.loss, "perplexity": finite, "eval_tokens": result.tokens})
