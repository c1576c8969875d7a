"""Peak GPU memory and training throughput with and without Liger's kernels.

    python bench/liger_memory.py [--models tiny,large] [--steps 20] [--repeats 1] [--micro-batch-size 2]
        [--sequence-len 2048] [--adapter lora|none] [--dtype bf16|fp32] [--train-on-inputs] [--json-out FILE]

The same short run (packed rows of ``--sequence-len`` tokens from the bundled chat data, bf16,
LoRA on every linear layer) is trained three ways on each model: without Liger; with Liger's
RoPE, RMSNorm and SwiGLU kernels; and with those plus the fused linear cross-entropy.  Each run
is a process of its own, because Liger's patches cannot be undone and peak memory must be that
run's own; with ``--repeats`` the variants alternate and the table shows medians.  Models:

* ``tiny``: the bundled tiny model (hidden 64, 2 layers, 151k vocabulary), random weights;
* ``large``: a random Qwen3 with hidden 1024, 8 layers, 16 heads and the same 151k vocabulary.

The default loss already computes logits only where tokens are trained, so the fused loss saves
most with ``--train-on-inputs`` (every token trained).  Needs a CUDA GPU with liger-kernel and
Triton; elsewhere the Liger rows report the error and only the baseline runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data" / "sgd_chat_600.jsonl"
KERNELS = "liger_rope: true\nliger_rms_norm: true\nliger_glu_activation: true\n"
VARIANTS = {
    "no liger": "",
    "liger kernels": KERNELS,
    "liger kernels + fused CE": KERNELS + "liger_fused_linear_cross_entropy: true\n",
}
LARGE = {"hidden_size": 1024, "intermediate_size": 3072, "layers": 8, "heads": 16, "kv_heads": 8}
GIB = 1024**3


def build_large(tiny: Path, out: Path) -> Path:
    """A random Qwen3 of the LARGE shape with the tiny model's tokenizer and vocabulary (bf16 weights)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    base = json.loads((tiny / "config.json").read_text())
    config = Qwen3Config(
        vocab_size=base["vocab_size"],
        hidden_size=LARGE["hidden_size"],
        intermediate_size=LARGE["intermediate_size"],
        num_hidden_layers=LARGE["layers"],
        num_attention_heads=LARGE["heads"],
        num_key_value_heads=LARGE["kv_heads"],
        head_dim=LARGE["hidden_size"] // LARGE["heads"],
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        pad_token_id=base["pad_token_id"],
        bos_token_id=base["bos_token_id"],
        eos_token_id=base["eos_token_id"],
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    for path in tiny.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(path, out / path.name)
    return out


def write_config(path: Path, model: Path, kernels: str, args: argparse.Namespace, workdir: Path) -> Path:
    """The config of one run: same data, shape and seed for every variant."""

    adapter = "adapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_target_linear: true\n"
    path.write_text(
        f"base_model: {model}\n"
        f"datasets:\n  - path: {args.data}\n"
        + (adapter if args.adapter == "lora" else "")
        + f"train_on_inputs: {str(args.train_on_inputs).lower()}\n"
        f"sequence_len: {args.sequence_len}\nsample_packing: true\nexcess_length_strategy: truncate\n"
        f"micro_batch_size: {args.micro_batch_size}\nmax_steps: {args.steps}\n"
        f"learning_rate: 1.0e-4\nlr_scheduler: constant\nbf16: {str(args.dtype == 'bf16').lower()}\n"
        "logging_steps: 1\nseed: 0\n"
        f"output_dir: {path.parent / 'out'}\ndataset_prepared_path: {workdir / 'prepared'}\n" + kernels
    )
    return path


def child(config: Path, result: Path) -> int:
    """Train as ``config`` says in this process; write peak memory, throughput and losses to ``result``."""
    import torch
    from rich.console import Console

    from ftk.commands.train import run_training
    from ftk.core.config.loader import load_config
    from ftk.core.errors import FtkError

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        cfg, manager = load_config(config)
        started = time.perf_counter()
        run_training(cfg, manager, console=Console(quiet=True))
    except FtkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    wall = time.perf_counter() - started
    logs = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [entry for entry in logs if "loss" in entry]
    # Steps 2..N: the first one includes start-up work (kernel compilation, allocator warm-up).
    tokens = steps[-1]["num_tokens"] - steps[0]["num_tokens"]
    seconds = sum(
        (later["num_tokens"] - earlier["num_tokens"]) / later["tokens_per_second"]
        for earlier, later in zip(steps, steps[1:], strict=False)
    )
    result.write_text(
        json.dumps(
            {
                "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
                "peak_reserved": torch.cuda.max_memory_reserved() if cuda else None,
                "tokens_per_second": tokens / seconds if seconds else None,
                "tokens_per_step": steps[-1]["num_tokens"] / len(steps),
                "losses": [entry["loss"] for entry in steps],
                "wall_seconds": wall,
            }
        )
    )
    return 0


def run_variant(model: Path, name: str, kernels: str, args: argparse.Namespace, workdir: Path) -> dict:
    """One run in a fresh process; its measurements, or the error it stopped with."""
    run_dir = workdir / f"{model.name}-{len(list(workdir.glob(model.name + '-*')))}"
    run_dir.mkdir()
    config = write_config(run_dir / "cfg.yaml", model, kernels, args, workdir)
    result = run_dir / "result.json"
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(config), str(result)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not result.is_file():
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return {
            "model": model.name,
            "variant": name,
            "error": lines[-1] if lines else f"exit {done.returncode}",
        }
    return {"model": model.name, "variant": name, **json.loads(result.read_text())}


def median_run(runs: list[dict]) -> dict:
    """One row for the repeats of a variant: the medians of the measurements (or the first error)."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    merged = dict(good[0])
    for field in ("peak_allocated", "peak_reserved", "tokens_per_second", "wall_seconds"):
        values = [r[field] for r in good if r[field] is not None]
        merged[field] = statistics.median(values) if values else None
    return merged


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    """Peak memory and throughput of each variant against the no-Liger run of the same model."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"LoRA={args.adapter == 'lora'}, {args.dtype}, packed sequence_len {args.sequence_len}, "
        f"micro-batch {args.micro_batch_size}, {args.steps} steps, train_on_inputs={args.train_on_inputs}"
    )
    for column in ("model", "variant", "peak GiB", "memory", "tokens/s", "speed", "step-1 loss"):
        table.add_column(column, justify="left" if column in ("model", "variant") else "right")
    baselines = {r["model"]: r for r in results if r["variant"] == "no liger" and "error" not in r}
    for r in results:
        if "error" in r:
            table.add_row(r["model"], r["variant"], "failed", "", "", "", "")
            continue
        base = baselines.get(r["model"])
        peak = r["peak_allocated"]
        memory = speed = ""
        if base is not None and peak and base["peak_allocated"]:
            memory = f"{peak / base['peak_allocated'] - 1:+.1%}"
        if base is not None and r["tokens_per_second"] and base["tokens_per_second"]:
            speed = f"{r['tokens_per_second'] / base['tokens_per_second']:.2f}x"
        table.add_row(
            r["model"],
            r["variant"],
            f"{peak / GIB:.2f}" if peak else "n/a",
            memory,
            f"{r['tokens_per_second']:,.0f}" if r["tokens_per_second"] else "n/a",
            speed,
            f"{r['losses'][0]:.4f}",
        )
    console = Console()
    console.print(table)
    for r in results:
        if "error" in r:
            console.print(f"{r['model']}, {r['variant']}: {r['error']}", markup=False, highlight=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--models", default="tiny,large", help="comma-separated: tiny, large")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant (the table shows medians)")
    parser.add_argument("--sequence-len", type=int, default=2048)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--adapter", choices=("lora", "none"), default="lora")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--train-on-inputs", action="store_true", help="train every token (not only replies)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), Path(args.child[1]))

    from ftk.plugins.tiny_model.builder import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tiny = build_tiny_model(workdir / "tiny", seed=0, warmup_steps=0)
        models = {"tiny": tiny}
        if "large" in args.models.split(","):
            models["large"] = build_large(tiny, workdir / "large")
        runs: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.repeats):  # alternate, so that machine noise hits every variant alike
            for key in args.models.split(","):
                for name, kernels in VARIANTS.items():
                    runs.setdefault((key, name), []).append(
                        run_variant(models[key], name, kernels, args, workdir)
                    )
        results = [median_run(group) for group in runs.values()]
    print_table(results, args)
    if args.json_out:
        settings = {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        }
        args.json_out.write_text(json.dumps({"settings": settings, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
