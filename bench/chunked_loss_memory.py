"""Peak memory and time of a training forward+backward: all logits at once vs the chunked loss (CPU or GPU).

Settings: ``chunked_cross_entropy: false`` (the trained positions' logits at once), the default
chunked loss (chunk size from a memory budget) and ``--chunks`` equal chunks.  Each setting runs
in its own process so that the peak resident memory (CPU) or the peak allocated memory (CUDA)
belongs to that setting alone; the first forward+backward gives the peak, the time is the median
of ``--reps`` more.  Settings alternate over ``--repeats`` rounds, and the table shows medians.
The model is a random Qwen3 with the tiny model's vocabulary (151,680 rows), so the logits
dominate as they do in real fine-tuning.

    python bench/chunked_loss_memory.py [--seq 2048] [--hidden 256] [--layers 2] [--chunks 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VOCAB = 151_680


def one_run(seq: int, hidden: int, layers: int, chunks: int, reps: int) -> dict:
    """Build the model, run training forward+backward passes, report time and peak memory.

    ``chunks``: 0 = all logits at once, -1 = the default chunk size, N = N equal chunks.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from ftk.plugins.loss import ChunkedLossSettings, summed_loss

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(config).to(device)
    model.train()
    ids = torch.randint(0, VOCAB, (1, seq), device=device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    settings = ChunkedLossSettings(
        chunked_cross_entropy=chunks != 0, chunked_cross_entropy_num_chunks=chunks if chunks > 0 else None
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = []
    for _ in range(reps + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        result = summed_loss(model, inputs, settings)  # the default loss: summed, then the token mean
        loss = result.summed / result.tokens
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        if len(seconds) == 1:
            if device == "cuda":
                peak = torch.cuda.max_memory_allocated() - base
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "loss": float(loss),
        "seconds": statistics.median(seconds[1:]) if reps else seconds[0],
        "extra_peak_bytes": peak,
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3, help="timed passes after the first")
    parser.add_argument("--repeats", type=int, default=1, help="processes per setting, alternating")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_run(args.seq, args.hidden, args.layers, args.one, args.reps)))
        return
    settings = {
        0: "all trained positions' logits at once",
        -1: "chunked (default chunk size)",
        args.chunks: f"chunked, {args.chunks} chunks",
    }
    results: dict[int, list[dict]] = {chunks: [] for chunks in settings}
    for _ in range(args.repeats):
        for chunks in settings:
            command = [sys.executable, __file__, "--seq", str(args.seq), "--hidden", str(args.hidden)]
            command += ["--layers", str(args.layers), "--reps", str(args.reps), "--one", str(chunks)]
            completed = subprocess.run(command, capture_output=True, text=True, check=True)
            results[chunks].append(json.loads(completed.stdout.splitlines()[-1]))
    device = results[0][0]["device"]
    print(
        f"training forward+backward, seq {args.seq} (every position trained), vocab {VOCAB:,}, "
        f"hidden {args.hidden}, {args.layers} layers, {device}; median of {args.repeats} process(es) "
        f"x {args.reps} timed passes\n"
    )
    print("| loss computation | loss | time (s) | extra peak memory (MiB) |")
    print("| --- | --- | --- | --- |")
    for chunks, name in settings.items():
        runs = results[chunks]
        seconds = statistics.median(run["seconds"] for run in runs)
        peak = statistics.median(run["extra_peak_bytes"] for run in runs)
        print(f"| {name} | {runs[0]['loss']:.6f} | {seconds:.2f} | {peak / 2**20:,.0f} |")


if __name__ == "__main__":
    main()
