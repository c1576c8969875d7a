"""``ftk merge-lora``: fold a trained LoRA adapter into its base model and save the full model."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.files import publish_directory, staging_directory

if TYPE_CHECKING:
    from ftk.core.hooks import Hooks

ADAPTER_CONFIG_NAME = "adapter_config.json"
MERGED_DIR_NAME = "merged"


def merge_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``merge-lora``'s arguments to its subparser."""
    parser.add_argument("config", help="YAML config of the run that trained the adapter")
    parser.add_argument(
        "--adapter", metavar="DIR", help="adapter directory (default: the config's output_dir)"
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help=f"where to write the merged model (default: <output_dir>/{MERGED_DIR_NAME})",
    )
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it is not empty")


def _check_output(output: Path, adapter: Path, force: bool) -> None:
    """Refuse an output that is the adapter, a file, or a non-empty directory (without ``--force``)."""
    if output.resolve() == adapter.resolve() or adapter.resolve().is_relative_to(output.resolve()):
        raise FtkError(f"--output: {output} would replace the adapter directory {adapter}; choose another")
    if output.exists() and not output.is_dir():
        raise FtkError(f"--output: {output} exists and is not a directory")
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not force:
        raise FtkError(f"--output: {output} is not empty (pass --force to replace it)")
    if not (output / "config.json").is_file():
        raise FtkError(
            f"--output: {output} is not empty and holds no config.json: refusing to replace it even "
            "with --force; choose another directory"
        )


def merge_lora(cfg: FtkConfig, hooks: Hooks, adapter: Path, output: Path, force: bool = False) -> Path:
    """Merge the LoRA adapter in ``adapter`` into the base model of ``cfg`` and save it to ``output``.

    The result (safetensors weights, config, tokenizer) loads with plain
    ``AutoModelForCausalLM.from_pretrained(output)``.  It is written to a temporary sibling
    directory and renamed when complete, so ``output`` never holds a partial model.
    """
    from peft import PeftModel

    from ftk.core.model import load_base_model, load_inference_tokenizer

    if not (adapter / ADAPTER_CONFIG_NAME).is_file():
        raise FtkError(
            f"--adapter: {adapter} has no {ADAPTER_CONFIG_NAME} (not a LoRA adapter; "
            "was the run trained with adapter: lora?)"
        )
    _check_output(output, adapter, force)
    tokenizer = load_inference_tokenizer(cfg, hooks, adapter)
    # "merge": plugins load full-precision weights (no quantized copy to merge into).
    base = load_base_model(cfg, hooks, tokenizer, "merge")
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.config.use_cache = True  # the merged model is for inference
    staging = staging_directory(output)
    try:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _check_output(output, adapter, force)  # again: something may have appeared meanwhile
        publish_directory(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def run_merge(args: argparse.Namespace) -> int:
    """Run ``ftk merge-lora`` as ``args`` says and print where the model went."""
    from ftk.core.lifecycle import prepare

    run = prepare(args.config, purpose="merge", manager=args.manager)
    adapter = Path(args.adapter or run.cfg.output_dir)
    output = Path(args.output) if args.output else Path(run.cfg.output_dir) / MERGED_DIR_NAME
    merge_lora(run.cfg, run.hooks, adapter, output, force=args.force)
    print(f"merged {adapter} into {run.cfg.base_model}: {output}")
    return 0
