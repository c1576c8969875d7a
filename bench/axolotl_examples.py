"""Do axolotl's own example configs run in ftk?  Validate, preprocess and a 2-step train, per config.

Takes a folder of axolotl YAML configs (by default the supervised fine-tuning ones listed in
``sft_list.txt`` of ``../shared/axolotl-examples``) and changes only what cannot work on a machine
without the Hugging Face Hub:

- ``base_model`` (and ``base_model_config``, ``tokenizer_config``) becomes a local model
  (``--model``, the bundled tiny model by default);
- each dataset's Hub ``path`` becomes a local file in the same format as that Hub dataset (the
  formats of the datasets axolotl's examples use are listed in ``HUB_FORMATS``; any other one is
  inferred from the dataset entry), and its ``data_files``/``name`` (which point into the Hub
  repository) are dropped;
- ``output_dir`` and ``dataset_prepared_path`` go to a scratch folder.

Every other key is kept as the config's author wrote it.  Each stage runs ``ftk`` as a user
would (``ftk validate``, ``ftk preprocess``, ``ftk train --max_steps 2``), each config in its
own process; a train that stops with ftk's clean machine error (a GPU-only setting on this CPU
machine, or an optional package it has not installed: exit 2, one line each, before any data
work) counts as ``machine``.  Percent splits (``train[:1%]``) get enough local rows to select
``--rows`` of them.  The output is one row per config and a table of the keys ftk rejected, with
how many configs each blocks.

    python bench/axolotl_examples.py                               # validate + preprocess, all 191
    python bench/axolotl_examples.py --stages validate             # the key table only (fast)
    python bench/axolotl_examples.py --stages validate preprocess train --limit 20
    python bench/axolotl_examples.py --json-out /tmp/axolotl.json --jobs 2
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = REPO.parent / "shared" / "axolotl-examples"
CHAT = REPO / "examples" / "data" / "sgd_chat_600.jsonl"
ALPACA = REPO / "examples" / "data" / "arithmetic_alpaca.jsonl"
STAGES = ("validate", "preprocess", "train")

#: The row format of each Hub dataset axolotl's examples train on (public dataset cards):
#: ``messages`` (OpenAI role/content), ``sharegpt`` (``conversations`` of from/value with
#: human/gpt), ``alpaca`` (instruction/input/output), ``text`` (one text column, named) or
#: ``jeopardy`` (question/category/answer).
HUB_FORMATS: dict[str, tuple[str, str]] = {
    "mhenrichsen/alpaca_2k_test": ("alpaca", ""),
    "tatsu-lab/alpaca": ("alpaca", ""),
    "teknium/GPT4-LLM-Cleaned": ("alpaca", ""),
    "yahma/alpaca-cleaned": ("alpaca", ""),
    "vicgalle/alpaca-gpt4": ("alpaca", ""),
    "garage-bAInd/Open-Platypus": ("alpaca", ""),
    "aaditya/alpaca_subset_1": ("alpaca", ""),
    "QingyiSi/Alpaca-CoT": ("alpaca", ""),
    "fozziethebeat/alpaca_messages_2k_test": ("messages", ""),
    "HuggingFaceH4/Multilingual-Thinking": ("messages", ""),
    "AI-MO/NuminaMath-CoT": ("messages", ""),
    "Nanobit/text-think-2k-test": ("messages", ""),
    "mlabonne/FineTome-100k": ("sharegpt", ""),
    "cgato/SlimOrcaDedupCleaned": ("sharegpt", ""),
    "togethercomputer/Long-Data-Collections": ("text", "text"),
    "princeton-nlp/TextbookChapters": ("text", "chapter"),
    "timdettmers/openassistant-guanaco": ("text", "text"),
    "openaccess-ai-collective/jeopardy": ("jeopardy", ""),
}
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
#: What a clean machine error says (``ftk.core.machine``, the plugins' ``check_environment``): the
#: setting needs hardware this machine lacks, or an optional package it has not installed.
MACHINE_ERROR = re.compile(
    r"GPU|CUDA|bfloat16|this machine|needs \w[\w-]*: pip install|not installed: pip install", re.IGNORECASE
)
#: ``--cpu-overrides``: the GPU-only settings axolotl's examples use most, turned off for the 2-step
#: train so that it runs on a CPU (everything else in the config is kept).
CPU_OVERRIDES = {"attn_implementation": "sdpa", "tf32": "false", "bf16": "false"}
#: ``cfg.yaml:12: datasets[0].type: ...`` -> the key path.
ERROR_KEY = re.compile(r"^error: [^:]+:(?:\d+:)? ?([A-Za-z_][\w.\[\]]*)")


@dataclass
class Result:
    """What each stage of one config gave: ok, failed, machine (clean GPU-only error) or skipped."""

    config: str
    validate: str = "skipped"
    preprocess: str = "skipped"
    train: str = "skipped"
    errors: list[str] = field(default_factory=list)
    rejected_keys: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _chat_rows(count: int) -> list[list[dict[str, str]]]:
    with CHAT.open() as source:
        return [json.loads(line)["messages"] for line in islice(source, count)]


def _alpaca_rows(count: int) -> list[dict[str, str]]:
    with ALPACA.open() as source:
        return [json.loads(line) for line in islice(source, count)]


def local_rows(kind: str, column: str, entry: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """``count`` rows of the bundled data in the format ``kind``, with the entry's field names."""
    if kind == "alpaca":
        return _alpaca_rows(count)
    if kind == "jeopardy":
        return [
            {"question": row["instruction"], "category": "ARITHMETIC", "answer": row["output"]}
            for row in _alpaca_rows(count)
        ]
    if kind == "text":
        return [
            {column or entry.get("field") or "text": "\n".join(m["content"] for m in messages)}
            for messages in _chat_rows(count)
        ]
    mapping = entry.get("message_property_mappings") or {}
    sharegpt = kind == "sharegpt"
    role_key = mapping.get("role") or entry.get("message_field_role") or ("from" if sharegpt else "role")
    content_key = (
        mapping.get("content") or entry.get("message_field_content") or ("value" if sharegpt else "content")
    )
    messages_key = entry.get("field_messages") or ("conversations" if sharegpt else "messages")
    rows = []
    for messages in _chat_rows(count):
        turns = [
            {role_key: SHAREGPT_ROLES[m["role"]] if sharegpt else m["role"], content_key: m["content"]}
            for m in messages
        ]
        rows.append({messages_key: turns})
    return rows


def dataset_format(entry: dict[str, Any]) -> tuple[str, str]:
    """The format of the rows a dataset entry reads: from ``HUB_FORMATS``, else from its type and fields."""
    known = HUB_FORMATS.get(str(entry.get("path")))
    if known is not None:
        return known
    kind = str(entry.get("type") or "")
    if kind.startswith(("alpaca", "instruct")):
        return "alpaca", ""
    if kind.startswith("completion") or kind == "pretrain":
        return "text", str(entry.get("field") or "text")
    if kind == "jeopardy":
        return "jeopardy", ""
    mapping = entry.get("message_property_mappings") or {}
    return ("sharegpt" if mapping.get("role") == "from" else "messages"), ""


def rows_for_split(rows: int, split: Any) -> int:
    """Rows to write so that a percent slice (``train[:1%]``) still selects about ``rows`` of them."""
    match = re.fullmatch(r"\w+\[(-?\d+)?%?:(-?\d+)?%\]", str(split or ""))
    if not match:
        return rows
    start, end = (int(part) if part else None for part in match.groups())
    share = ((end if end is not None else 100) - (start or 0)) % 100 or 100
    return min(20_000, -(-rows * 100 // share))


def localize(config: dict[str, Any], model: Path, scratch: Path, rows: int) -> dict[str, Any]:
    """The config with the model, the data, the output and the cache made local (nothing else changed)."""
    config = dict(config)
    for key in ("base_model", "base_model_config", "tokenizer_config"):
        if key in config and config[key] is not None:
            config[key] = str(model)
    for key in ("datasets", "test_datasets"):
        entries = config.get(key)
        if not isinstance(entries, list):
            continue
        local = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                local.append(entry)
                continue
            entry = dict(entry)
            kind, column = dataset_format(entry)
            path = scratch / f"{key}-{index}.jsonl"
            count = rows_for_split(rows, entry.get("split"))
            path.write_text("".join(json.dumps(row) + "\n" for row in local_rows(kind, column, entry, count)))
            entry["path"] = str(path)
            for hub_only in ("data_files", "name"):
                entry.pop(hub_only, None)
            local.append(entry)
        config[key] = local
    config["output_dir"] = str(scratch / "out")
    if "dataset_prepared_path" in config:
        config["dataset_prepared_path"] = str(scratch / "prepared")
    return config


def run_ftk(args: list[str], timeout: float) -> tuple[int, str]:
    """Exit code and stderr of ``ftk ARGS`` in its own process, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ftk.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return 124, f"error: timed out after {timeout:.0f} s"
    return done.returncode, done.stderr


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of a run (a traceback's last line when there are none)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    if not lines and stderr.strip():
        lines = [f"traceback: {stderr.strip().splitlines()[-1]}"]
    return lines


def outcome(code: int, stderr: str) -> str:
    """ok, machine (exit 2 with the clean GPU-only error) or failed."""
    if code == 0:
        return "ok"
    errors = error_lines(stderr)
    if code == 2 and errors and all(MACHINE_ERROR.search(line) for line in errors):
        return "machine"
    return "failed"


def rejected_keys(errors: list[str]) -> list[str]:
    """The top-level keys named by validation errors (``datasets`` for an entry's key)."""
    keys = []
    for line in errors:
        match = ERROR_KEY.match(line)
        if match:
            keys.append(re.split(r"[.\[]", match.group(1))[0])
    return keys


def check_config(source: Path, name: str, args: argparse.Namespace, scratch: Path) -> Result:
    """Run the asked stages on one config; a stage runs only when the one before it passed."""
    result = Result(name)
    started = time.perf_counter()
    data = yaml.safe_load(source.read_text())
    config = localize(data if isinstance(data, dict) else {}, args.model, scratch, args.rows)
    path = scratch / "cfg.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    previous = "ok"
    for stage in STAGES:
        if stage not in args.stages:
            continue  # a later stage runs without it (train prepares its own data)
        if previous != "ok":
            break
        command = [stage, str(path)] + (["--max_steps", "2"] if stage == "train" else [])
        if stage == "train" and args.cpu_overrides:
            command += [part for key, value in CPU_OVERRIDES.items() for part in (f"--{key}", value)]
        code, stderr = run_ftk(command, args.timeout)
        previous = outcome(code, stderr)
        setattr(result, stage, previous)
        if previous != "ok":
            result.errors = error_lines(stderr)
            if stage == "validate":
                result.rejected_keys = sorted(set(rejected_keys(result.errors)))
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def config_names(folder: Path, listing: str | None) -> list[str]:
    """The configs to check: those ``listing`` names (relative to ``folder``), else every YAML file."""
    if listing:
        return [line.strip() for line in (folder / listing).read_text().splitlines() if line.strip()]
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*.y*ml"))


def summary_table(results: list[Result], stages: list[str]) -> str:
    """Counts per stage: ok, machine error, failed (of the configs that reached the stage)."""
    lines = ["| stage | reached | ok | machine error | failed |", "| --- | ---: | ---: | ---: | ---: |"]
    for stage in stages:
        counts = collections.Counter(getattr(result, stage) for result in results)
        reached = len(results) - counts["skipped"]
        lines.append(f"| {stage} | {reached} | {counts['ok']} | {counts['machine']} | {counts['failed']} |")
    return "\n".join(lines)


def key_table(results: list[Result]) -> str:
    """Each rejected key and how many configs it blocks, most first."""
    counts = collections.Counter(key for result in results for key in result.rejected_keys)
    lines = ["| key | configs |", "| --- | ---: |"]
    lines += [f"| `{key}` | {count} |" for key, count in counts.most_common()]
    return "\n".join(lines)


def main() -> None:
    """Check every config and print the per-config rows, the stage counts and the key table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="folder of axolotl configs")
    parser.add_argument(
        "--list", default="sft_list.txt", help="file in the folder naming the configs ('' = all)"
    )
    parser.add_argument("--model", type=Path, default=REPO / "models" / "tiny", help="local model to train")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=["validate", "preprocess"])
    parser.add_argument("--rows", type=int, default=40, help="rows of local data per dataset")
    parser.add_argument("--limit", type=int, default=None, help="only the first N configs")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per stage")
    parser.add_argument("--json-out", type=Path, default=None, help="write every result here")
    parser.add_argument("--jobs", type=int, default=1, help="configs checked at the same time")
    parser.add_argument(
        "--cpu-overrides",
        action="store_true",
        help="train with attn_implementation sdpa, tf32 and bf16 off (see CPU_OVERRIDES)",
    )
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"no model at {args.model}: build one with `ftk tiny-model {args.model}`")
    args.model = args.model.resolve()
    names = config_names(args.folder, args.list or None)[: args.limit]

    def check(name: str) -> Result:
        scratch = Path(tempfile.mkdtemp(prefix="ftk-axolotl-"))
        try:
            return check_config(args.folder / name, name, args, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    results = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each stage is its own process
        for number, result in enumerate(pool.map(check, names), 1):
            results.append(result)
            stages = " ".join(f"{stage}={getattr(result, stage)}" for stage in args.stages)
            first = f"  {result.errors[0][:150]}" if result.errors else ""
            print(
                f"[{number}/{len(names)}] {result.config}: {stages} ({result.seconds} s){first}", flush=True
            )
    print()
    print(f"{len(results)} configs from {args.folder}")
    print(summary_table(results, args.stages))
    print()
    print(key_table(results))
    if args.json_out:
        args.json_out.write_text(json.dumps([asdict(result) for result in results], indent=2))


if __name__ == "__main__":
    main()
