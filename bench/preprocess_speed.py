"""Preprocessing speed and memory: the whole ``ftk preprocess`` command, end to end.

Default: chat dialogues (the shared SGD sample, repeated to ``--rows``) through ``ftk preprocess``
with a fresh cache, once per process count, each run its own process as a user would start it.
The table gives the wall time from start to exit (Python start-up and imports included), the
tokens kept, tokens per second and peak memory, and checks that every process count wrote the
same rows.

    python bench/preprocess_speed.py --rows 10000                      # 1 and 2 processes
    python bench/preprocess_speed.py --rows 10000 --processes 1 2 --repeats 3
    python bench/preprocess_speed.py --memory 100000 1000000           # peak memory against rows
    python bench/preprocess_speed.py --turn-by-turn [--repeat 5]       # masking only, against
                                                                       # turn-by-turn rendering

``--memory`` generates short two-message conversations (about 25 tokens each) so that a million
rows take minutes, not hours, and reports peak memory per row count: what must not grow with the
rows is the anonymous memory (heap); the memory-mapped arrow files that ``datasets`` reads count in
RSS while their pages are in use but are the cache on disk, not a copy in memory.

``CPU seconds`` is the user and system time of the main process and its workers together: on a
busy machine it moves less than the wall time. Memory: ``peak RSS`` is the largest resident set
of the main process (``ru_maxrss``), ``worker RSS`` the largest of any worker process, ``peak
heap`` the largest sum, over the main process and its workers, of anonymous memory with pages
shared between forks counted once (``Pss_Anon`` of ``/proc/PID/smaps_rollup``, every 100 ms).

``--turn-by-turn`` keeps the earlier comparison of the masking alone: ftk's ``chat_template``
renders each conversation once and tracks every message through the template; the turn-by-turn
approach renders the conversation up to and after every assistant turn (quadratic in turns).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "bench-data" / "chat.jsonl"
BUNDLED_DATA = REPO / "examples" / "data" / "sgd_chat_600.jsonl"
DEFAULT_MODEL = REPO / "models" / "tiny"
IGNORE_INDEX = -100

#: Runs ``ftk`` in this process; writes its exit code, peak memory (ru_maxrss) and CPU time to argv[1].
RUNNER = """
import json, resource, sys
from ftk.cli import main
report, argv = sys.argv[1], sys.argv[2:]
code = main(argv)
me, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + workers.ru_utime + workers.ru_stime
with open(report, "w") as out:
    json.dump({"code": code, "self_kib": me.ru_maxrss, "children_kib": workers.ru_maxrss, "cpu_s": cpu}, out)
sys.exit(code)
"""


# --- data ------------------------------------------------------------------------------------------


def write_dialogues(source: Path, rows: int, path: Path) -> Path:
    """``rows`` conversations: the lines of ``source`` repeated in order."""
    lines = [line for line in source.read_text().splitlines() if line.strip()]
    with path.open("w") as out:
        for line in itertools.islice(itertools.cycle(lines), rows):
            out.write(line + "\n")
    return path


WORDS = "alpha beta gamma delta apple river stone cloud quick brown fox jumps over the lazy dog".split()


def write_short_rows(rows: int, path: Path) -> Path:
    """``rows`` short generated conversations (a question and an answer of a few words each)."""
    rng = random.Random(0)
    with path.open("w") as out:
        for index in range(rows):
            question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
            messages = [
                {"role": "user", "content": f"{index}: {question}?"},
                {"role": "assistant", "content": answer},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


# --- one run of the command ---------------------------------------------------------------------


def _heap_kib(pids: list[int]) -> int:
    """Anonymous memory of ``pids``, pages shared by forks counted once (``Pss_Anon``), in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                fields = dict(
                    line.split(":", 1) for line in rollup if line.startswith(("Pss_Anon:", "Anonymous:"))
                )
        except OSError:
            continue
        total += int((fields.get("Pss_Anon") or fields.get("Anonymous") or "0 kB").split()[0])
    return total


def _descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as children:
                queue.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return found


def run_preprocess(
    data: Path, model: Path, processes: int, sequence_len: int, workdir: Path, name: str
) -> dict:
    """``ftk preprocess --json`` on ``data`` with a fresh cache (ftk's and datasets'); its figures."""
    run_dir = workdir / name
    run_dir.mkdir()
    cfg = run_dir / "cfg.yaml"
    cfg.write_text(
        f"base_model: {model}\n"
        f"datasets:\n  - path: {data}\n    type: chat_template\n"
        f"sequence_len: {sequence_len}\n"
        f"dataset_processes: {processes}\n"
        f"output_dir: {run_dir / 'out'}\n"
        f"dataset_prepared_path: {run_dir / 'prepared'}\n"
    )
    env = {**os.environ, "HF_DATASETS_CACHE": str(run_dir / "hf-datasets"), "HF_HUB_OFFLINE": "1"}
    report = run_dir / "report.json"
    command = [sys.executable, "-c", RUNNER, str(report), "preprocess", str(cfg), "--json"]
    peak_heap = 0
    done = threading.Event()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        nonlocal peak_heap
        while not done.is_set():
            peak_heap = max(peak_heap, _heap_kib(_descendants(process.pid)))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"ftk preprocess failed ({process.returncode}):\n{stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    memory = json.loads(report.read_text())
    return {
        "rows": summary["datasets"][0]["rows"],
        "processes": processes,
        "seconds": seconds,
        "cpu_seconds": memory["cpu_s"],
        "tokens": summary["tokens"],
        "trained_tokens": summary["trained_tokens"],
        "train_rows": summary["train_rows"],
        "peak_rss_mib": memory["self_kib"] / 1024,
        "worker_rss_mib": memory["children_kib"] / 1024 if processes > 1 else None,
        "peak_heap_mib": peak_heap / 1024,
        "digest": _digest(Path(summary["cache_dir"])),
    }


def _digest(cache_dir: Path) -> str:
    """A digest of the prepared rows, in order (to check that process counts agree)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.compute as pc

    digest = hashlib.sha256()
    for part in sorted((cache_dir / "train").glob("*.arrow")):
        with pa.memory_map(str(part)) as source:
            table = pa.ipc.open_stream(source).read_all()
        for column in ("input_ids", "labels", "attention_mask"):
            values = table.column(column)
            digest.update(pc.list_flatten(values).to_numpy().tobytes())
            digest.update(pc.list_value_length(values).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def speed(args: argparse.Namespace, workdir: Path, console: Console) -> int:
    source = args.data
    data = write_dialogues(source, args.rows, workdir / f"chat-{args.rows}.jsonl")
    figures = []
    for repeat in range(args.repeats):
        for processes in args.processes:  # alternating, so machine noise hits every count alike
            name = f"p{processes}-r{repeat}"
            figures.append(run_preprocess(data, args.model, processes, args.sequence_len, workdir, name))
    best = {
        p: min((f for f in figures if f["processes"] == p), key=lambda f: f["seconds"])
        for p in args.processes
    }
    table = Table(
        title=f"ftk preprocess, end to end: {args.rows:,} dialogues ({source.name} repeated), "
        f"sequence_len {args.sequence_len}, fresh cache; best of {args.repeats}"
    )
    for column in ("processes", "rows", "rows kept", "tokens", "seconds", "tokens/s", "CPU seconds",
                   "peak RSS MiB", "worker RSS MiB", "peak heap MiB"):  # fmt: skip
        table.add_column(column, justify="right")
    for processes, figure in best.items():
        table.add_row(
            str(processes),
            f"{figure['rows']:,}",
            f"{figure['train_rows']:,}",
            f"{figure['tokens']:,}",
            f"{figure['seconds']:.2f}",
            f"{figure['tokens'] / figure['seconds']:,.0f}",
            f"{figure['cpu_seconds']:.1f}",
            _mib(figure["peak_rss_mib"]),
            _mib(figure["worker_rss_mib"]),
            _mib(figure["peak_heap_mib"]),
        )
    console.print(table)
    if args.repeats > 1:
        for processes in args.processes:
            times = ", ".join(f"{f['seconds']:.2f}" for f in figures if f["processes"] == processes)
            console.print(f"{processes} process(es), every run: {times} s")
    same = len({f["digest"] for f in figures}) == 1
    console.print(f"same rows (input_ids, labels, attention_mask) from every run: {same}")
    _write_json(args, {"mode": "speed", "figures": figures, "same": same})
    return 0 if same else 1


def memory(args: argparse.Namespace, workdir: Path, console: Console) -> int:
    figures = []
    for rows in args.memory:
        data = write_short_rows(rows, workdir / f"short-{rows}.jsonl")
        for processes in args.processes:
            figures.append(run_preprocess(data, args.model, processes, 64, workdir, f"m{rows}-p{processes}"))
        data.unlink()
    table = Table(
        title="ftk preprocess: peak memory against rows (short generated conversations, fresh cache)"
    )
    for column in ("rows", "processes", "tokens", "seconds", "tokens/s", "CPU seconds", "peak RSS MiB",
                   "worker RSS MiB", "peak heap MiB"):  # fmt: skip
        table.add_column(column, justify="right")
    for figure in figures:
        table.add_row(
            f"{figure['rows']:,}",
            str(figure["processes"]),
            f"{figure['tokens']:,}",
            f"{figure['seconds']:.1f}",
            f"{figure['tokens'] / figure['seconds']:,.0f}",
            f"{figure['cpu_seconds']:.1f}",
            _mib(figure["peak_rss_mib"]),
            _mib(figure["worker_rss_mib"]),
            _mib(figure["peak_heap_mib"]),
        )
    console.print(table)
    _write_json(args, {"mode": "memory", "figures": figures})
    return 0


# --- masking alone, against turn-by-turn rendering ------------------------------------------------


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


def _map(fn, rows, processes: int) -> tuple[float, int, int]:
    """Seconds, tokens and trained tokens for mapping ``fn`` over ``rows``."""

    def batch_fn(batch: dict) -> dict:
        out: dict[str, list[int]] = {"length": [], "trained": []}
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


def turn_by_turn(args: argparse.Namespace, console: Console) -> int:
    import datasets
    from datasets import Dataset

    from ftk.core.config.schema import DatasetConfig, FtkConfig
    from ftk.plugins.tiny_model.builder import build_tokenizer
    from ftk.prompt_strategies.chat_template import ChatTemplateOptions, ChatTemplateTokenizer

    datasets.disable_progress_bars()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()] * args.repeat
    dataset = Dataset.from_list([{"messages": row["messages"]} for row in rows])
    tokenizer = build_tokenizer()
    cfg = FtkConfig(base_model="tiny", datasets=[DatasetConfig(path=str(args.data))])
    ftk_fn = ChatTemplateTokenizer(ChatTemplateOptions(), tokenizer, cfg)
    turn_fn = TurnByTurn(tokenizer)

    figures = []
    for processes in sorted(set(args.processes)):
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
    by_processes = {p: [f for f in figures if f["processes"] == p] for p in sorted(set(args.processes))}
    same = all(len({(f["tokens"], f["trained"]) for f in group}) == 1 for group in by_processes.values())

    table = Table(title=f"chat_template masking alone, {len(rows):,} conversations ({args.data.name})")
    for column in ("method", "processes", "seconds", "tokens/s", "trained tokens", "ftk speed-up"):
        table.add_column(column, justify="right")
    for figure in figures:
        reference = next(
            f for f in figures if f["method"] == "turn-by-turn" and f["processes"] == figure["processes"]
        )
        figure["tokens_per_second"] = figure["tokens"] / figure["seconds"]
        table.add_row(
            figure["method"],
            str(figure["processes"]),
            f"{figure['seconds']:.2f}",
            f"{figure['tokens_per_second']:,.0f}",
            f"{figure['trained']:,}",
            f"{reference['seconds'] / figure['seconds']:.1f}x" if figure["method"] == "ftk" else "",
        )
    console.print(table)
    console.print(f"same tokens and trained tokens from both methods: {same}")
    _write_json(args, {"mode": "turn-by-turn", "rows": len(rows), "figures": figures, "same": same})
    return 0 if same else 1


# --- command line ---------------------------------------------------------------------------------


def _write_json(args: argparse.Namespace, figures: dict) -> None:
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


def _model(args: argparse.Namespace, workdir: Path) -> Path:
    """``--model`` if it exists, else a tiny model built into ``workdir`` (the tokenizer is what counts)."""
    if args.model.is_dir():
        return args.model
    built = workdir / "tiny-model"
    subprocess.run(
        [sys.executable, "-m", "ftk.cli", "tiny-model", str(built)], check=True, capture_output=True
    )
    return built


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[2:]),
    )  # fmt: skip
    parser.add_argument("--rows", type=int, default=10_000, help="dialogues to preprocess (default 10,000)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="dataset_processes values")
    parser.add_argument("--repeats", type=int, default=1, help="runs per process count; the best is shown")
    parser.add_argument("--sequence-len", type=int, default=512)
    parser.add_argument(
        "--data",
        type=Path,
        default=SHARED_DATA if SHARED_DATA.is_file() else BUNDLED_DATA,
        help="chat rows to repeat (default: ../shared/bench-data/chat.jsonl, else the bundled sample)",
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (for its tokenizer)")
    parser.add_argument(
        "--memory", type=int, nargs="+", metavar="ROWS", help="peak memory for these row counts"
    )
    parser.add_argument("--turn-by-turn", action="store_true", help="masking alone, against turn-by-turn")
    parser.add_argument("--repeat", type=int, default=1, help="(--turn-by-turn) use the rows this many times")
    parser.add_argument("--json-out", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (data, caches)")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    if args.turn_by_turn:
        return turn_by_turn(args, console)
    workdir = Path(tempfile.mkdtemp(prefix="ftk-preprocess-bench-"))
    try:
        args.model = _model(args, workdir)
        return memory(args, workdir, console) if args.memory else speed(args, workdir, console)
    finally:
        if args.keep:
            console.print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
