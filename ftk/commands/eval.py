"""``ftk eval``: the token-mean loss and perplexity of a model on a config's eval set.

The model is the base model as the loading hooks give it, or, with ``--adapter DIR`` or
``--model DIR`` (as ``ftk generate`` takes them), what DIR holds: a peft adapter put on that base
model, or a full model (a full fine-tune's output, a merged model).  When DIR holds a tokenizer it
is used instead of the config's, so tokens added in training match.  ``--json`` prints the
metrics under the names ``metrics.jsonl`` gives them during training: ``eval_loss``,
``eval_perplexity``, ``eval_tokens``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from ftk.commands.common import add_config_argument, positive_int
from ftk.commands.inference import load_inference_model, model_kind, place
from ftk.core import run_dir
from ftk.core.config.schema import FtkConfig
from ftk.core.data.pipeline import prepare_data
from ftk.core.errors import FtkError
from ftk.core.evaluate import EvalResult, eval_dataloader, evaluate_loss, hook_summed_loss
from ftk.core.lifecycle import prepare
from ftk.core.model import load_inference_tokenizer
from ftk.core.plugins import FtkPluginManager


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
    model_dir: str | Path | None = None,
) -> EvalResult:
    """Token-mean loss of the base model (or of ``adapter`` / ``model_dir``) over the eval set of ``cfg``.

    ``batch_size`` overrides ``eval_batch_size``; the result does not depend on it.  Progress goes
    to ``console`` (stderr by default).
    """
    console = console or Console(stderr=True)
    require_eval_set(cfg)
    if batch_size is not None and batch_size <= 0:
        raise FtkError(f"--batch-size: must be a positive number (got {batch_size})")
    if adapter is not None and model_dir is not None:
        raise FtkError("--adapter, --model: give one of them")
    hooks = manager.hooks
    label = "--model" if model_dir is not None else "--adapter"
    chosen = model_dir if model_dir is not None else adapter
    directory = Path(chosen) if chosen is not None else None
    if directory is not None:
        model_kind(directory, label)  # a wrong path fails before the data is prepared
    tokenizer = load_inference_tokenizer(cfg, hooks, directory)
    data = prepare_data(cfg, tokenizer, manager.collect_registrations())
    assert data.eval is not None  # require_eval_set guarantees a split or test_datasets
    model = load_inference_model(cfg, hooks, tokenizer, directory, label)
    device = place(model)
    what = "base model" if directory is None else f"{model_kind(directory, label)} {directory}"
    trained_by = run_dir.origin(directory) if directory is not None else None
    if trained_by is not None:
        what += f", trained by {trained_by}"
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
    """One JSON object with metrics.jsonl's names: ``eval_loss``, ``eval_perplexity`` (null when it
    overflows) and ``eval_tokens``."""
    metrics: dict[str, float | None] = dict(result.as_metrics())
    if metrics["eval_perplexity"] == float("inf"):
        metrics["eval_perplexity"] = None
    return json.dumps(metrics)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ftk eval CONFIG [--adapter DIR | --model DIR] [--json] [--batch-size N]``."""
    add_config_argument(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--adapter",
        metavar="DIR",
        help="evaluate this peft adapter on base_model (or a full model directory; default: the base model)",
    )
    source.add_argument("--model", metavar="DIR", help="evaluate this full or merged model directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the result")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="examples per forward pass (default: eval_batch_size, else micro_batch_size)",
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate as ``args`` say and print the result (a line, or JSON)."""
    prepared = prepare(args.config, args.overrides, purpose="inference", manager=args.manager)
    result = run_eval(
        prepared.cfg, prepared.manager, adapter=args.adapter, batch_size=args.batch_size, model_dir=args.model
    )
    if args.json:
        print(result_json(result))
    else:
        Console().print(result_line(result), highlight=False)
    return 0
