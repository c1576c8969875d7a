"""Preprocessing speed: ftk's chat_template strategy against turn-by-turn double rendering.

The comparison approach is the one some trainers use to find each assistant turn: for every turn
it renders the conversation up to the turn and up to the turn's end, tokenizes both, and takes
the difference. That costs work quadratic in the number of turns. ftk renders each
conversation once and tracks every message through the template (linear). Both are run on
the same rows with the tiny model's tokenizer (Qwen BPE, ChatML). The script checks that they
train the same number of tokens and prints one table: tokens per second with one process and
with every core, and the ratio.

    python bench/preprocess_speed.py [--data ../shared/bench-data/chat.jsonl] [--repeat N] [--json-out F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from datasets import Dataset
from rich.console import Console
from rich.table import Table

from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.plugins.tiny_model.builder import build_tokenizer
from ftk.prompt_strategies.chat_template import ChatTemplateOptions, ChatTemplateTokenizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "bench-data" / "chat.jsonl"
FALLBACK_DATA = REPO / "examples" / "data" / "sgd_chat_600.jsonl"
IGNORE_INDEX = -100


class TurnByTurn:
    """Masks by rendering the prefix before and after each assistant turn (the quadratic approach)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def _ids(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, row: dict) -> dict[str, list[int]]:
        messages = row["messages"]
        input_ids = self._ids(messages, generation_prompt=False)
        labels = [IGNORE_INDEX] * len(input_ids)
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(self._ids(messages[:index], generation_prompt=True))
            end = len(self._ids(messages[: index + 1], generation_prompt=False))
            # The turn's content and its end token: drop the template's trailing newline.
            end -= 1
            labels[start:end] = input_ids[start:end]
        return {"input_ids": input_ids, "labels": labels}


def _map(fn, rows: Dataset, processes: int) -> tuple[float, int, int]:
    """Seconds, tokens and trained tokens for mapping ``fn`` over ``rows``."""

    def batch_fn(batch: dict) -> dict:
        out = {"length": [], "trained": []}
        for messages in batch["messages"]:
            features = fn({"messages": messages})
            out["length"].append(len(features["input_ids"]))
            out["trained"].append(sum(1 for label in features["labels"] if label != IGNORE_INDEX))
        return out

    started = time.perf_counter()
    result = rows.map(
        batch_fn,
        batched=True,
        remove_columns=rows.column_names,
        num_proc=processes if processes > 1 else None,
        load_from_cache_file=False,
        keep_in_memory=True,
    )
    elapsed = time.perf_counter() - started
    return elapsed, sum(result["length"]), sum(result["trained"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_file() else FALLBACK_DATA
    )
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="'all cores' column")
    parser.add_argument("--json-out", type=Path, help="also write the figures here")
    parser.add_argument("--repeat", type=int, default=1, help="use the rows this many times (a larger set)")
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()] * args.repeat
    dataset = Dataset.from_list([{"messages": row["messages"]} for row in rows])
    tokenizer = build_tokenizer()
    cfg = FtkConfig(base_model="tiny", datasets=[DatasetConfig(path=str(args.data))])
    ftk_fn = ChatTemplateTokenizer(ChatTemplateOptions(), tokenizer, cfg)
    turn_fn = TurnByTurn(tokenizer)

    figures = []
    # Alternate the methods so machine noise hits both alike.
    for processes in (1, args.processes):
        for name, fn in (("turn-by-turn", turn_fn), ("ftk", ftk_fn)):
            seconds, tokens, trained = _map(fn, dataset, processes)
            figures.append(
                {
                    "method": name,
                    "processes": processes,
                    "seconds": seconds,
                    "tokens": tokens,
                    "trained": trained,
                }
            )
    check = {(f["method"], f["processes"]): (f["tokens"], f["trained"]) for f in figures}
    same = check[("ftk", 1)] == check[("turn-by-turn", 1)]

    table = Table(title=f"chat_template preprocessing, {len(rows):,} conversations ({args.data.name})")
    for column in ("method", "processes", "seconds", "tokens/s", "trained tokens", "ftk speed-up"):
        table.add_column(column, justify="right")
    for figure in figures:
        rate = figure["tokens"] / figure["seconds"]
        reference = next(
            f for f in figures if f["method"] == "turn-by-turn" and f["processes"] == figure["processes"]
        )
        ratio = reference["seconds"] / figure["seconds"]
        figure["tokens_per_second"] = rate
        table.add_row(
            figure["method"],
            str(figure["processes"]),
            f"{figure['seconds']:.2f}",
            f"{rate:,.0f}",
            f"{figure['trained']:,}",
            f"{ratio:.1f}x" if figure["method"] == "ftk" else "",
        )
    console = Console()
    console.print(table)
    console.print(f"same tokens and trained tokens from both methods: {same}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": len(rows), "figures": figures, "same": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
