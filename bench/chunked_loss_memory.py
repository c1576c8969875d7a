"""Peak memory and time of one forward+backward with the plain loss vs chunked_cross_entropy (CPU or GPU).

Each setting runs in its own process so that the peak resident memory (CPU) or the peak
allocated memory (CUDA) belongs to that setting alone.  The model is a random Qwen3 with the
tiny model's vocabulary (151,680 rows), so the logits dominate as they do in real fine-tuning.

    python bench/chunked_loss_memory.py [--seq 2048] [--hidden 256] [--layers 2] [--chunks 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

VOCAB = 151_680


def one_run(seq: int, hidden: int, layers: int, chunks: int) -> dict:
    """Build the model, run one training forward+backward, report time and peak memory."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from ftk.plugins.loss import compute_loss

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
    cfg = SimpleNamespace(
        chunked_cross_entropy=chunks > 0,
        chunked_cross_entropy_num_chunks=max(chunks, 1),
        router_aux_loss_coef=None,
        gradient_accumulation_steps=1,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    loss = compute_loss(model=model, inputs=inputs, num_items_in_batch=None, cfg=cfg)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "loss": float(loss),
        "seconds": time.perf_counter() - start,
        "extra_peak_bytes": peak,
        "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_run(args.seq, args.hidden, args.layers, args.one)))
        return
    rows = []
    for chunks in (0, args.chunks):
        command = [sys.executable, __file__, "--seq", str(args.seq), "--hidden", str(args.hidden)]
        command += ["--layers", str(args.layers), "--one", str(chunks)]
        result = json.loads(
            subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        )
        rows.append(
            (f"chunked, {chunks} chunks" if chunks else "plain (logits at trained positions)", result)
        )
    device = rows[0][1]["device"]
    print(f"one forward+backward, seq {args.seq}, vocab {VOCAB:,}, hidden {args.hidden}, {device}\n")
    print("| loss computation | loss | time (s) | extra peak memory (MiB) |")
    print("| --- | --- | --- | --- |")
    for name, result in rows:
        print(
            f"| {name} | {result['loss']:.6f} | {result['seconds']:.2f} | {result['extra_peak_bytes'] / 2**20:,.0f} |"
        )


if __name__ == "__main__":
    main()
