"""GPU throughput of ftk LoRA training on Qwen3-0.6B / Qwen3-8B shapes (random weights), Liger on and off.

Each run is ``ftk train`` in a fresh process (bf16, LoRA r 16 on all linear layers, packing,
``sequence_len`` 2048, the bundled chat data); the plugin ``bench/random_model_plugin.py``
builds the model from its published shape, so nothing is downloaded.  Reported per run: real
tokens per second over the steps after warm-up, peak GPU memory, and model FLOPs utilisation
against the bf16 matrix-multiply rate measured on the same GPU at the start.

    python bench/gpu_throughput.py [--models qwen3-0.6b qwen3-8b] [--steps 30] [--liger both]

``--smoke`` checks the harness itself in seconds, on any machine: the ``smoke`` shape (hidden 64,
2 layers), 4 steps of 256 tokens, Liger off, and on a machine without a GPU float32 instead of
bf16 and no MFU.  Run it first in a GPU session so that no device time goes to a broken harness.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.random_model_plugin import SHAPES, VOCAB_SIZE, write_model_dir  # noqa: E402

CHAT = REPO / "examples" / "data" / "sgd_chat_600.jsonl"
LIGER_KEYS = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_fused_linear_cross_entropy")


def matmul_tflops(size: int = 8192, repeats: int = 50) -> float:
    """Measured bf16 matrix-multiply rate of this GPU, in TFLOP/s (the MFU denominator)."""
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def parameters(shape: dict) -> int:
    """Parameter count of a Qwen3 shape (embeddings counted once when tied)."""
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    embeddings = VOCAB_SIZE * h * (1 if shape["tie_word_embeddings"] else 2)
    return n * per_layer + embeddings


def flops_per_token(shape: dict, sequence_len: int) -> float:
    """Training FLOPs per token by the usual convention: 6 N, plus 6 L s (heads x head_dim) for causal attention."""
    attention = (
        6 * shape["num_hidden_layers"] * sequence_len * shape["num_attention_heads"] * shape["head_dim"]
    )
    return 6 * parameters(shape) + attention


def config_text(
    model_dir: Path, liger: bool, steps: int, out: Path, tokenizer: Path, sequence_len: int, bf16: bool = True
) -> str:
    """The ftk config of one run (``bf16=False``: float32, for a machine without a GPU)."""
    lines = [
        f"base_model: {model_dir}",
        f"tokenizer_config: {tokenizer}",
        "plugins: [bench.random_model_plugin]",
        f"datasets:\n  - path: {CHAT}\n    type: chat_template",
        "adapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_target_linear: true",
        f"sequence_len: {sequence_len}\nsample_packing: true\nexcess_length_strategy: truncate",
        "micro_batch_size: 1\ngradient_accumulation_steps: 1",
        f"max_steps: {steps}\nlearning_rate: 1.0e-4\nwarmup_steps: 2",
        ("bf16: true\ntf32: true" if bf16 else "bf16: false") + "\ngradient_checkpointing: true",
        "attn_implementation: sdpa",
        "logging_steps: 1\nseed: 0\nadvisor:\n  enabled: false",
        f"output_dir: {out}\ndataset_prepared_path: {out.parent / 'prepared'}",
    ]
    if liger:
        lines += [f"{key}: true" for key in LIGER_KEYS]
    return "\n".join(lines) + "\n"


def one_run(model: str, liger: bool, args: argparse.Namespace, workdir: Path) -> dict:
    """Train once; return tokens/s (median over the steps after warm-up) and peak memory."""
    out = workdir / f"{model}-{'liger' if liger else 'plain'}"
    cfg = workdir / f"{out.name}.yaml"
    model_dir = write_model_dir(model, workdir / "models" / model)
    cfg.write_text(
        config_text(model_dir, liger, args.steps, out, args.tokenizer, args.sequence_len, bf16=args.bf16)
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.run(
        [sys.executable, "-m", "ftk.cli", "train", str(cfg)], env=env, capture_output=True, text=True
    )
    if process.returncode != 0:
        return {"error": process.stderr.strip().splitlines()[-1] if process.stderr.strip() else "failed"}
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [entry["tokens_per_second"] for entry in logs if "tokens_per_second" in entry][args.warmup :]
    summary = (out / "summary.md").read_text()
    peak = next((line.split("|")[2].strip() for line in summary.splitlines() if "peak" in line), "?")
    return {"tokens_per_second": statistics.median(rates), "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["qwen3-0.6b", "qwen3-8b"], choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="logged steps left out of the median")
    parser.add_argument("--sequence-len", type=int, default=2048)
    parser.add_argument("--liger", choices=["off", "on", "both"], default="both")
    parser.add_argument("--tokenizer", type=Path, default=REPO / "models" / "tiny")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="check the harness: tiny shape, 4 short steps")
    args = parser.parse_args()
    if not (args.tokenizer / "tokenizer.json").is_file():
        sys.exit(f"no tokenizer in {args.tokenizer}: run `ftk tiny-model {args.tokenizer}` first")
    import torch

    args.bf16 = torch.cuda.is_available()
    if args.smoke:
        args.models, args.steps, args.warmup, args.sequence_len, args.liger = ["smoke"], 4, 1, 256, "off"
    elif not args.bf16:
        sys.exit("no CUDA GPU: this benchmark measures GPU throughput (--smoke checks the harness anywhere)")
    peak_tflops = matmul_tflops() if args.bf16 else None
    ligers = {"off": [False], "on": [True], "both": [False, True]}[args.liger]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for liger in ligers:
                result = one_run(model, liger, args, Path(tmp))
                if "tokens_per_second" in result and peak_tflops:
                    achieved = result["tokens_per_second"] * flops_per_token(SHAPES[model], args.sequence_len)
                    result["mfu"] = achieved / (peak_tflops * 1e12)
                rows.append({"model": model, "liger": liger, **result})
                print(json.dumps(rows[-1]), flush=True)
    rate = f"bf16 matmul rate measured: {peak_tflops:,.0f} TFLOP/s" if peak_tflops else "no GPU: float32"
    print(f"\n{rate}; LoRA r16, packed, seq {args.sequence_len}\n")
    print("| model | liger | real tokens/s | peak memory | MFU (6N + attention) |")
    print("| --- | --- | ---: | --- | ---: |")
    for row in rows:
        if "error" in row:
            print(f"| {row['model']} | {'on' if row['liger'] else 'off'} | error: {row['error']} | | |")
            continue
        mfu = f"{row['mfu']:.1%}" if "mfu" in row else "n/a"
        print(
            f"| {row['model']} | {'on' if row['liger'] else 'off'} | {row['tokens_per_second']:,.0f} "
            f"| {row['peak']} | {mfu} |"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps({"matmul_tflops": peak_tflops, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
