"""Training throughput on CPU, packed against unpacked, on the bundled tiny model.

Both runs use the same data, sequence_len, micro-batch size, LoRA settings and step count. Runs
alternate between the two, so machine noise hits both alike; the table shows medians.

    python bench/packing_speed.py [--model models/tiny] [--steps 20] [--repeats 2] [--sequence-len 1024]

Without --model, a tiny model with random weights is built in a temporary folder. Throughput
does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ftk.commands.train import run_training
from ftk.core.config.loader import load_config

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "sgd_chat_600.jsonl"


def run(model: Path, packed: bool, args: argparse.Namespace, workdir: Path, index: int) -> dict:
    """One training run; returns its real-token throughput, padding share and timing."""
    out = workdir / f"run{index}"
    cfg_path = workdir / f"cfg{index}.yaml"
    cfg_path.write_text(
        f"base_model: {model}\n"
        f"datasets:\n  - path: {args.data}\n"
        "adapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_target_linear: true\n"
        f"sequence_len: {args.sequence_len}\nsample_packing: {str(packed).lower()}\n"
        f"micro_batch_size: {args.micro_batch_size}\nmax_steps: {args.steps}\nlearning_rate: 1.0e-3\n"
        f"logging_steps: 1\noutput_dir: {out}\ndataset_prepared_path: {workdir / 'prepared'}\n"
    )
    cfg, manager = load_config(cfg_path)
    started = time.perf_counter()
    result = run_training(cfg, manager, console=Console(quiet=True))
    wall = time.perf_counter() - started
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [entry for entry in logs if "loss" in entry]
    # Throughput over steps 2..N (the first step includes start-up work): each log entry holds the
    # real tokens and the rate since the previous one.
    tokens = steps[-1]["num_tokens"] - steps[0]["num_tokens"]
    seconds = sum(
        (later["num_tokens"] - earlier["num_tokens"]) / later["tokens_per_second"]
        for earlier, later in zip(steps, steps[1:], strict=False)
    )
    return {
        "packed": packed,
        "tokens_per_second": tokens / seconds,
        "real_tokens": steps[-1]["num_tokens"],
        "wall_seconds": wall,
        "final_loss": steps[-1]["loss"],
        "efficiency": result.data.packing["efficiency"] if packed and result.data.packing else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="tiny model folder (default: build one)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sequence-len", type=int, default=1024)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = args.model
        if model is None:
            from ftk.plugins.tiny_model.builder import build_tiny_model

            model = build_tiny_model(workdir / "tiny", seed=0, warmup_steps=0)
        results = []
        for _ in range(args.repeats):
            for packed in (False, True):
                results.append(run(model, packed, args, workdir, len(results)))

    table = Table(
        title=f"CPU training, tiny model, sequence_len {args.sequence_len}, "
        f"micro-batch {args.micro_batch_size}, {args.steps} steps, median of {args.repeats}"
    )
    for column in ("batches", "real tokens/s", "real tokens per step", "packing efficiency", "speed-up"):
        table.add_column(column, justify="right")
    medians = {}
    for packed in (False, True):
        runs = [r for r in results if r["packed"] == packed]
        medians[packed] = {
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
            "tokens_per_step": statistics.median(r["real_tokens"] / args.steps for r in runs),
            "efficiency": runs[0]["efficiency"],
        }
    for packed in (False, True):
        m = medians[packed]
        table.add_row(
            "packed" if packed else "padded",
            f"{m['tokens_per_second']:,.0f}",
            f"{m['tokens_per_step']:,.0f}",
            f"{m['efficiency']:.2%}" if m["efficiency"] is not None else "",
            f"{m['tokens_per_second'] / medians[False]['tokens_per_second']:.2f}x",
        )
    Console().print(table)
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"runs": results, "medians": {str(k): v for k, v in medians.items()}})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
