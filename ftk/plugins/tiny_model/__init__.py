"""Built-in plugin: the ``ftk tiny-model OUT_DIR`` command; the model itself is built by ``builder.py``."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from ftk.core.hookspecs import hookimpl
from ftk.core.progress_lines import ProgressLines

if TYPE_CHECKING:
    from ftk.core.registry import Register


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``tiny-model``'s arguments to its subparser."""
    from . import builder as tm

    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to write the model to (new or empty)")
    parser.add_argument(
        "--seed", type=int, default=tm.DEFAULT_SEED, help="random seed (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=tm.DEFAULT_WARMUP_STEPS,
        metavar="N",
        help="warm-up steps on the bundled dialogues, training the embeddings and norms (what a LoRA "
        "adapter leaves frozen); 0 keeps the random initialisation (default: %(default)s)",
    )
    parser.add_argument(
        "--hidden-size", type=int, default=tm.DEFAULT_HIDDEN_SIZE, help="hidden size (default: %(default)s)"
    )
    parser.add_argument(
        "--num-layers", type=int, default=tm.DEFAULT_NUM_LAYERS, help="decoder layers (default: %(default)s)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace OUT_DIR if it already holds a model directory"
    )


def _run(args: argparse.Namespace) -> int:
    """Build the tiny model as ``args`` asks, print a summary and return 0."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import builder as tm

    console = Console(stderr=True)
    started = time.perf_counter()
    # In a log (no terminal) the rich bar prints nothing: a line every few seconds instead.
    lines = ProgressLines("tiny-model warm-up", args.warmup_steps, "steps")
    with Progress(
        TextColumn("[bold]warm-up[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=args.warmup_steps <= 0 or not console.is_terminal,  # a log gets `lines` instead
    ) as progress:
        task = progress.add_task("warm-up", total=max(args.warmup_steps, 1), loss="-")

        def report(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, loss=f"{loss:.3f}")
            lines.update(step, f"loss {loss:.3f}")
            if step == total:
                lines.finish()

        out = tm.build_tiny_model(
            args.out_dir,
            seed=args.seed,
            warmup_steps=args.warmup_steps,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            force=args.force,
            progress=report,
            stage=lambda text: console.print(
                f"tiny-model: {text}", markup=False, highlight=False, soft_wrap=True
            ),
        )
    elapsed = time.perf_counter() - started

    info = tm.read_build_info(out)
    warmup = info["warmup"]
    if warmup["steps"]:
        losses = f"{warmup['loss_start']:.3f} → {warmup['loss_end']:.3f} in {warmup['steps']} steps"
    else:
        losses = "none (random initialisation)"
    out_console = Console(soft_wrap=True)  # a long path stays on its line in a log
    out_console.print(f"[bold green]tiny model written to[/bold green] {out}")
    out_console.print(
        f"  Qwen3ForCausalLM: {info['parameters']:,} parameters, hidden {info['hidden_size']}, "
        f"{info['num_layers']} layers, seed {info['seed']}"
    )
    out_console.print(
        f"  vocab: {info['vocab_size']:,} rows for {info['tokenizer_size']:,} tokens (Qwen BPE)"
    )
    out_console.print(f"  warm-up loss: {losses}")
    out_console.print(f"  time: {elapsed:.1f} s")
    return 0


@hookimpl
def register_commands(register: Register) -> None:
    """Contribute the ``tiny-model`` command."""
    register(
        name="tiny-model",
        help="build the bundled tiny test model (Qwen BPE tokenizer + small Qwen3) offline",
        add_arguments=_add_arguments,
        run=_run,
    )
