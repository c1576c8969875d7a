"""Over a hundred bad inputs, one table: each ends in ``error:`` lines, exit code 2, no traceback, nothing written.

A case names the command it runs (``validate`` for what the config alone shows, ``preprocess``
for data, ``train`` for the machine and the run directory), what it changes in a small valid run
(config keys, whole config text, data file bytes, environment variables, extra CLI arguments)
and a fragment the first error line must hold: the file and line or row, and the field.
The categories and their counts are listed in docs/troubleshooting.md ("Bad inputs ftk is tested on").
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ftk.cli import main
from ftk.core.locks import exclusive_lock
from tests.helpers import first_chat_rows, write_config

DELETE = object()


@dataclass
class Case:
    """One bad input: how to make it from the valid run, and what the error must say."""

    id: str
    category: str
    expect: list[str]
    command: str = "validate"
    keys: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    data: bytes | str | None = None
    config_text: str | None = None
    files: dict[str, bytes | str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    argv: list[str] | None = None
    hold_lock: str | None = None  # a file (relative to the case's folder) another run holds locked


def rows(*items: Any) -> str:
    """JSON lines of ``items``."""
    return "".join(json.dumps(item) + "\n" for item in items)


def chat(user: Any = "hi", assistant: Any = "hello") -> dict[str, Any]:
    """One two-turn conversation."""
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


GOOD = rows(chat(), chat("2+2?", "4"), chat("name?", "ftk"), chat("bye", "bye"))
ALPACA = {"type": "alpaca"}
PARQUET = b"PAR1\x15\x04\x15\x00" + bytes(200) + b"PAR1"
GOOD_ALPACA = rows(*[{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(4)])

CONFIG_SYNTAX = [
    Case("yaml-unclosed-bracket", "config file", ["cfg.yaml:"], config_text="datasets: [\n"),
    Case("yaml-tab-indent", "config file", ["cfg.yaml:"], config_text="base_model: m\n\tseed: 1\n"),
    Case(
        "yaml-duplicate-key", "config file", ["seed"], config_text="base_model: {model}\nseed: 1\nseed: 2\n"
    ),
    Case("yaml-top-level-list", "config file", ["cfg.yaml"], config_text="- base_model: m\n"),
    Case("yaml-empty-file", "config file", ["cfg.yaml"], config_text=""),
    Case("yaml-only-comment", "config file", ["cfg.yaml"], config_text="# nothing\n"),
    Case("yaml-scalar", "config file", ["cfg.yaml"], config_text="just a string\n"),
    Case("yaml-binary", "config file", ["cfg.yaml"], config_text="\x00\x01\x02\xff"),
    Case("yaml-undefined-alias", "config file", ["cfg.yaml:"], config_text="seed: *nope\n"),
    Case("config-missing", "config file", ["nope.yaml"], argv=["validate", "{tmp}/nope.yaml"]),
    Case("config-is-directory", "config file", ["directory"], argv=["validate", "{tmp}"]),
]

CONFIG_KEYS = [
    Case("typo-lora-r", "config keys", ["lora_rnak", "lora_r"], keys={"lora_rnak": 8}),
    Case("typo-learning-rate", "config keys", ["learnig_rate", "learning_rate"], keys={"learnig_rate": 1e-3}),
    Case("typo-micro-batch", "config keys", ["micro_batch", "micro_batch_size"], keys={"micro_batch": 2}),
    Case("typo-dataset-key", "config keys", ["datasets[0]", "tpye"], dataset={"tpye": "chat_template"}),
    Case("unknown-section-key", "config keys", ["advisor", "enbled"], keys={"advisor": {"enbled": False}}),
    Case("missing-base-model", "config keys", ["base_model"], keys={"base_model": DELETE}),
    Case("missing-datasets", "config keys", ["datasets"], keys={"datasets": DELETE}),
    Case("datasets-empty", "config keys", ["datasets"], keys={"datasets": []}),
    Case("datasets-a-string", "config keys", ["datasets"], keys={"datasets": "data.jsonl"}),
    Case("dataset-no-path", "config keys", ["datasets[0]", "path"], dataset={"path": DELETE}),
    Case("lr-text", "config values", ["learning_rate"], keys={"learning_rate": "fast"}),
    Case("lr-negative", "config values", ["learning_rate"], keys={"learning_rate": -1e-3}),
    Case("lr-infinite", "config values", ["learning_rate"], keys={"learning_rate": float("inf")}),
    Case("lr-nan", "config values", ["learning_rate"], keys={"learning_rate": float("nan")}),
    Case("mbs-zero", "config values", ["micro_batch_size"], keys={"micro_batch_size": 0}),
    Case("mbs-negative", "config values", ["micro_batch_size"], keys={"micro_batch_size": -2}),
    Case("mbs-float", "config values", ["micro_batch_size"], keys={"micro_batch_size": 2.5}),
    Case("mbs-bool", "config values", ["micro_batch_size"], keys={"micro_batch_size": True}),
    Case(
        "gas-zero", "config values", ["gradient_accumulation_steps"], keys={"gradient_accumulation_steps": 0}
    ),
    Case("seq-len-zero", "config values", ["sequence_len"], keys={"sequence_len": 0}),
    Case("seq-len-bool", "config values", ["sequence_len"], keys={"sequence_len": True}),
    Case("max-steps-negative", "config values", ["max_steps"], keys={"max_steps": -5}),
    Case("epochs-zero", "config values", ["num_epochs"], keys={"num_epochs": 0, "max_steps": DELETE}),
    Case("val-set-1.5", "config values", ["val_set_size"], keys={"val_set_size": 1.5}),
    Case("val-set-negative", "config values", ["val_set_size"], keys={"val_set_size": -0.1}),
    Case("warmup-ratio-2", "config values", ["warmup_ratio"], keys={"warmup_ratio": 2.0}),
    Case("warmup-steps-negative", "config values", ["warmup_steps"], keys={"warmup_steps": -1}),
    Case("seed-text", "config values", ["seed"], keys={"seed": "x"}),
    Case("seed-huge", "config values", ["seed"], keys={"seed": 2**40}),
    Case("bf16-maybe", "config values", ["bf16"], keys={"bf16": "maybe"}),
    Case("weight-decay-text", "config values", ["weight_decay"], keys={"weight_decay": "lots"}),
    Case("max-grad-norm-negative", "config values", ["max_grad_norm"], keys={"max_grad_norm": -1.0}),
    Case("save-steps-zero", "config values", ["save_steps"], keys={"save_steps": 0}),
    Case("logging-steps-zero", "config values", ["logging_steps"], keys={"logging_steps": 0}),
    Case("lora-r-zero", "config values", ["lora_r"], keys={"adapter": "lora", "lora_r": 0}),
    Case(
        "lora-dropout-1.5", "config values", ["lora_dropout"], keys={"adapter": "lora", "lora_dropout": 1.5}
    ),
    Case("lora-alpha-text", "config values", ["lora_alpha"], keys={"adapter": "lora", "lora_alpha": "x"}),
    Case("adapter-unknown", "config names", ["adapter", "lora"], keys={"adapter": "lorra"}),
    Case("optimizer-unknown", "config names", ["optimizer", "adamw_torch"], keys={"optimizer": "adamw_trch"}),
    Case("scheduler-unknown", "config names", ["lr_scheduler", "cosine"], keys={"lr_scheduler": "cosin"}),
    Case("report-to-unknown", "config names", ["report_to", "tensorboard"], keys={"report_to": "tensorbord"}),
    Case(
        "dataset-type-typo",
        "config names",
        ["chat_templat", "chat_template"],
        dataset={"type": "chat_templat"},
    ),
    Case("dataset-type-alpacca", "config names", ["alpacca", "alpaca"], dataset={"type": "alpacca"}),
    Case("dataset-type-not-importable", "config names", ["nosuchpkg"], dataset={"type": "nosuchpkg.mod.fn"}),
    Case(
        "roles-to-train-typo", "config values", ["roles_to_train"], dataset={"roles_to_train": ["asistant"]}
    ),
    Case("train-on-eos-bad", "config values", ["train_on_eos"], dataset={"train_on_eos": "sometimes"}),
    Case(
        "excess-length-bad",
        "config values",
        ["excess_length_strategy"],
        keys={"excess_length_strategy": "chop"},
    ),
    Case("deepspeed-bad-preset", "config names", ["deepspeed"], keys={"deepspeed": "zero9"}),
    Case("deepspeed-missing-json", "config values", ["deepspeed"], keys={"deepspeed": "{tmp}/ds.json"}),
    Case("plugin-unknown", "config names", ["plugins"], keys={"plugins": ["no_such_plugin_pkg.Plugin"]}),
    Case("eval-batch-negative", "config values", ["eval_batch_size"], keys={"eval_batch_size": -1}),
    Case("dataset-processes-zero", "config values", ["dataset_processes"], keys={"dataset_processes": 0}),
]

PATHS = [
    Case(
        "base-model-missing-relative",
        "paths",
        ["base_model", "no such directory"],
        keys={"base_model": "./models/nope"},
    ),
    Case(
        "base-model-missing-absolute",
        "paths",
        ["base_model", "no such directory"],
        keys={"base_model": "/nonexistent/m"},
    ),
    Case(
        "base-model-three-parts", "paths", ["base_model", "no such directory"], keys={"base_model": "a/b/c"}
    ),
    Case("base-model-is-file", "paths", ["base_model"], keys={"base_model": "{tmp}/chat.jsonl"}),
    Case(
        "base-model-beside-config",
        "paths",
        ["base_model", "next to the config"],
        keys={"base_model": "beside"},
    ),
    Case(
        "hub-id-offline",
        "paths",
        ["base_model", "offline"],
        command="train",
        keys={"base_model": "nobody-here/no-model"},
    ),
    Case("output-dir-is-file", "paths", ["output_dir", "is a file"], keys={"output_dir": "{tmp}/chat.jsonl"}),
    Case("output-dir-parent-file", "paths", ["output_dir"], keys={"output_dir": "{tmp}/chat.jsonl/out"}),
    Case("output-dir-empty", "paths", ["output_dir"], keys={"output_dir": ""}),
    Case("output-dir-is-base-model", "paths", ["output_dir"], keys={"output_dir": "{model}"}),
    Case(
        "prepared-path-is-file",
        "paths",
        ["dataset_prepared_path"],
        keys={"dataset_prepared_path": "{tmp}/chat.jsonl"},
    ),
    Case("dataset-missing", "paths", ["datasets[0].path"], dataset={"path": "{tmp}/missing.jsonl"}),
    Case(
        "dataset-beside-config",
        "paths",
        ["datasets[0].path", "next to the config"],
        dataset={"path": "besidedata.jsonl"},
    ),
    Case(
        "dataset-unknown-extension",
        "paths",
        ["datasets[0]"],
        command="preprocess",
        dataset={"path": "{tmp}/data.txt"},
        files={"data.txt": GOOD},
    ),
    Case(
        "resume-missing",
        "paths",
        ["resume_from_checkpoint"],
        keys={"resume_from_checkpoint": "{tmp}/checkpoint-9"},
    ),
    Case("tokenizer-config-missing", "paths", ["tokenizer_config"], keys={"tokenizer_config": "./tok/nope"}),
]

P = "preprocess"
DATA_FILES = [
    Case("data-empty", "data files", ["data.jsonl", "empty"], command=P, data=b""),
    Case("data-whitespace", "data files", ["data.jsonl", "empty"], command=P, data="\n\n  \n"),
    Case(
        "data-bad-json-line-5",
        "data files",
        ["data.jsonl:5"],
        command=P,
        data=GOOD[:-1] + '\n{"messages": [\n',
    ),
    Case(
        "data-bare-number-line-2",
        "data files",
        ["data.jsonl:2"],
        command=P,
        data=rows(chat()) + "42\n" + rows(chat()),
    ),
    Case("data-array-line", "data files", ["data.jsonl:1"], command=P, data="[1, 2]\n" + rows(chat())),
    Case("data-string-line", "data files", ["data.jsonl:2"], command=P, data=rows(chat()) + '"text"\n'),
    Case("data-binary", "data files", ["data.jsonl"], command=P, data=bytes(range(256)) * 8),
    Case("data-parquet-named-jsonl", "data files", ["data.jsonl"], command=P, data=PARQUET),
    Case(
        "data-latin1",
        "data files",
        ["data.jsonl"],
        command=P,
        data=rows(chat()).encode() + '{"messages": "caf\xe9"}\n'.encode("latin-1"),
    ),
    Case("data-truncated-last-line", "data files", ["data.jsonl:4"], command=P, data=GOOD[: len(GOOD) - 20]),
    Case(
        "data-csv-empty",
        "data files",
        ["data.csv"],
        command=P,
        dataset={"path": "{tmp}/data.csv", "type": "alpaca"},
        files={"data.csv": ""},
    ),
    Case(
        "data-parquet-corrupt",
        "data files",
        ["data.parquet"],
        command=P,
        dataset={"path": "{tmp}/data.parquet"},
        files={"data.parquet": b"PAR1 not really"},
    ),
    Case(
        "data-dir-empty",
        "data files",
        ["datasets[0].path"],
        command=P,
        dataset={"path": "{tmp}/emptydir"},
        files={"emptydir/": ""},
    ),
]

DATA_ROWS = [
    Case(
        "messages-missing",
        "data rows",
        ["data.jsonl", "messages"],
        command=P,
        data=rows({"conversation": []}) * 4,
    ),
    Case(
        "messages-a-string",
        "data rows",
        ["data.jsonl", "messages"],
        command=P,
        data=rows({"messages": "hi"}) * 4,
    ),
    Case("messages-empty-list", "data rows", ["data.jsonl"], command=P, data=rows({"messages": []}) * 4),
    Case(
        "content-null-all", "data rows", ["data.jsonl", "content"], command=P, data=rows(chat(None, None)) * 4
    ),
    Case(
        "no-assistant-turn-all",
        "data rows",
        ["datasets[0]"],
        command=P,
        data=rows({"messages": [{"role": "user", "content": "hi"}]}) * 4,
    ),
    Case(
        "role-unknown",
        "data rows",
        ["data.jsonl", "role"],
        command=P,
        data=rows({"messages": [{"role": "wizard", "content": "x"}]}) * 4,
    ),
    Case(
        "role-missing",
        "data rows",
        ["data.jsonl", "role"],
        command=P,
        data=rows({"messages": [{"content": "x"}]}) * 4,
    ),
    Case("content-a-number", "data rows", ["data.jsonl", "content"], command=P, data=rows(chat(5, 6)) * 4),
    Case(
        "alpaca-output-null",
        "data rows",
        ["data.jsonl", "output"],
        command=P,
        dataset=ALPACA,
        data=rows({"instruction": "q", "output": None}) * 4,
    ),
    Case(
        "alpaca-instruction-missing",
        "data rows",
        ["data.jsonl", "instruction"],
        command=P,
        dataset=ALPACA,
        data=rows({"output": "a"}) * 4,
    ),
    Case(
        "alpaca-field-renamed-missing",
        "data rows",
        ["data.jsonl", "question"],
        command=P,
        dataset={**ALPACA, "field_instruction": "question"},
        data=GOOD_ALPACA,
    ),
    Case(
        "completion-text-missing",
        "data rows",
        ["data.jsonl", "text"],
        command=P,
        dataset={"type": "completion"},
        data=rows({"body": "x"}) * 4,
    ),
    Case(
        "completion-text-number",
        "data rows",
        ["data.jsonl", "text"],
        command=P,
        dataset={"type": "completion"},
        data=rows({"text": 7}) * 4,
    ),
    Case(
        "input-output-segments-missing",
        "data rows",
        ["data.jsonl", "segments"],
        command=P,
        dataset={"type": "input_output"},
        data=rows({"text": "x"}) * 4,
    ),
    Case(
        "input-output-label-not-bool",
        "data rows",
        ["data.jsonl", "label"],
        command=P,
        dataset={"type": "input_output"},
        data=rows({"segments": [{"text": "x", "label": "yes"}]}) * 4,
    ),
    Case(
        "csv-missing-column",
        "data rows",
        ["data.csv", "output"],
        command=P,
        dataset={"path": "{tmp}/data.csv", "type": "alpaca"},
        files={"data.csv": "instruction,input\nq,\n"},
    ),
]

STRATEGIES = [
    Case(
        "strategy-wrong-signature",
        "custom strategies",
        ["datasets[0].type", "badstrat.two_args"],
        dataset={"type": "badstrat.two_args"},
    ),
    Case(
        "strategy-not-callable",
        "custom strategies",
        ["datasets[0].type", "badstrat.CONSTANT"],
        dataset={"type": "badstrat.CONSTANT"},
    ),
    Case(
        "strategy-attribute-missing",
        "custom strategies",
        ["datasets[0].type", "missing"],
        dataset={"type": "badstrat.missing"},
    ),
    Case(
        "strategy-module-raises",
        "custom strategies",
        ["datasets[0].type", "brokenstrat"],
        dataset={"type": "brokenstrat.fn"},
    ),
    Case(
        "strategy-bad-row",
        "custom strategies",
        ["data.jsonl"],
        command=P,
        dataset={"type": "badstrat.rejects_rows"},
    ),
]

MACHINE = [
    Case("bf16-on-this-cpu", "machine", ["bf16"], command="train", keys={"bf16": True}),
    Case("deepspeed-not-installed", "machine", ["deepspeed"], command="train", keys={"deepspeed": "zero2"}),
    Case(
        "fsdp-without-gpu", "machine", ["fsdp"], command="train", keys={"fsdp_version": 2, "fsdp_config": {}}
    ),
    Case("liger-on-cpu", "machine", ["liger"], command="train", keys={"liger_rms_norm": True}),
    Case(
        "load-in-4bit-and-8bit",
        "config values",
        ["load_in_8bit"],
        keys={"adapter": "qlora", "load_in_4bit": True, "load_in_8bit": True},
    ),
    Case(
        "flash-attention-on-cpu",
        "machine",
        ["attn_implementation"],
        command="train",
        keys={"attn_implementation": "flash_attention_2"},
    ),
    Case("nproc-zero", "machine", ["nproc"], command="train", args=["--nproc-per-node", "0"]),
    Case(
        "nproc-with-deepspeed",
        "machine",
        ["deepspeed"],
        command="train",
        keys={"deepspeed": "zero2"},
        args=["--nproc-per-node", "2"],
    ),
]

CLI = [
    Case("override-typo", "command line", ["lerning_rate", "learning_rate"], args=["--lerning_rate", "1e-3"]),
    Case("override-bad-value", "command line", ["micro_batch_size"], args=["--micro_batch_size", "zero"]),
    Case("override-negative", "command line", ["max_steps"], args=["--max_steps", "-3"]),
    Case(
        "eval-adapter-missing",
        "command line",
        ["adapter"],
        keys={"val_set_size": 0.5},
        argv=["eval", "{cfg}", "--adapter", "{tmp}/noadapter"],
    ),
    Case(
        "generate-model-missing",
        "command line",
        ["model"],
        argv=["generate", "{cfg}", "--model", "{tmp}/nomodel", "hi"],
    ),
    Case("merge-lora-without-adapter", "command line", ["adapter"], argv=["merge-lora", "{cfg}"]),
]

#: 529 bytes of YAML that expand to 9**9 values through nine levels of aliases.
ALIAS_BOMB = "".join(
    [f"a0: &a0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]\n" for n in range(1, 9)]
)
#: A pickle that would call print("pwned") if it were loaded without weights-only loading.
EVIL_PICKLE = b"\x80\x02}q\x00X\x05\x00\x00\x00stateq\x01c__builtin__\nprint\nq\x02X\x05\x00\x00\x00pwnedq\x03\x85q\x04Rq\x05s."
CHECKPOINT = "{tmp}/old/checkpoint-2"

ADVERSARIAL = [
    Case(
        "yaml-alias-bomb",
        "adversarial",
        ["cfg.yaml:", "too many values: more than 100,000"],
        config_text=ALIAS_BOMB,
    ),
    Case(
        "yaml-deep-nesting",
        "adversarial",
        ["cfg.yaml:2", "nested more than 100 levels deep"],
        config_text="base_model: m\nseed: " + "[" * 10_000 + "]" * 10_000 + "\n",
    ),
    Case(
        "yaml-python-tag",
        "adversarial",
        ["cfg.yaml:2", "python/name:os.system"],
        config_text="base_model: m\nseed: !!python/name:os.system x\n",
    ),
    Case(
        "data-nested-100k-arrays",
        "adversarial",
        ["data.jsonl:2", "nested 100,001 levels deep (arrays and objects); a row may nest 63 at most"],
        command=P,
        data=rows(chat()) + '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}\n" + rows(chat()),
    ),
    Case(
        "data-nested-100k-objects",
        "adversarial",
        ["data.jsonl:3", "nested 100,001 levels deep"],
        command=P,
        data=rows(chat(), chat()) + '{"meta": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}\n",
    ),
    Case(
        "data-huge-row-raise",
        "adversarial",
        ["data.jsonl:2", "tokens (a text of 5,000,000 characters), more than sequence_len"],
        command=P,
        keys={"excess_length_strategy": "raise"},
        data=rows(chat(), chat("Summarise this.", "word " * 1_000_000), chat()),
    ),
    Case(
        "concurrent-run-on-output-dir",
        "adversarial",
        ["output_dir", "is in use by process", "wait for it to finish"],
        command="train",
        hold_lock="out/.ftk-run.lock",
    ),
    Case(
        "resume-optimizer-pickle-runs-code",
        "adversarial",
        ["cfg.yaml:", "resume_from_checkpoint:", "optimizer.pt is not a valid checkpoint file"],
        command="train",
        keys={"resume_from_checkpoint": CHECKPOINT},
        files={
            "old/checkpoint-2/trainer_state.json": '{"global_step": 2}',
            "old/checkpoint-2/optimizer.pt": EVIL_PICKLE,
        },
    ),
    Case(
        "output-dir-foreign-files",
        "adversarial",
        ["cfg.yaml:", "output_dir:", "holds no ftk run (README.md)", "overwrite_output_dir: true"],
        command="train",
        files={"out/README.md": "# my notes\n"},
    ),
]

MORE_PATHS = [
    Case(
        "resume-trainer-state-garbage",
        "paths",
        ["cfg.yaml:", "resume_from_checkpoint:", "trainer_state.json is not a valid checkpoint file"],
        keys={"resume_from_checkpoint": CHECKPOINT},
        files={"old/checkpoint-2/trainer_state.json": "{not json"},
    ),
    Case(
        "prepared-locks-is-file",
        "paths",
        ["dataset_prepared_path", "prepared/.locks"],
        command=P,
        files={"prepared/.locks": "not a folder"},
    ),
    Case(
        "path-unset-variable",
        "paths",
        ["cfg.yaml:", "output_dir: environment variable FTK_UNSET_VARIABLE is not set"],
        keys={"output_dir": "$FTK_UNSET_VARIABLE/run"},
    ),
]

MORE_STRATEGIES = [
    Case(
        "strategy-missing-dependency",
        "custom strategies",
        ["datasets[0].type", "depstrat", "No module named 'no_such_dep_xyz'"],
        dataset={"type": "depstrat.build"},
        files={
            "depstrat.py": "import no_such_dep_xyz\n\ndef build(dataset, tokenizer, cfg):\n    return None\n"
        },
    ),
]

CASES = (
    CONFIG_SYNTAX
    + CONFIG_KEYS
    + PATHS
    + MORE_PATHS
    + DATA_FILES
    + DATA_ROWS
    + STRATEGIES
    + MORE_STRATEGIES
    + MACHINE
    + CLI
    + ADVERSARIAL
)

STRATEGY_MODULES = {
    "badstrat.py": (
        "CONSTANT = 3\n"
        "def two_args(a, b):\n    return {}\n"
        "def rejects_rows(row, tokenizer, cfg):\n    raise ValueError('no good')\n"
    ),
    "brokenstrat.py": "raise RuntimeError('cannot import me')\n",
}


def _fill(value: Any, tmp: Path, model: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp)).replace("{model}", str(model))
    if isinstance(value, list):
        return [_fill(item, tmp, model) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, tmp, model) for key, item in value.items()}
    return value


def _without_deleted(mapping: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if value is not DELETE}


def _write_case(case: Case, tmp: Path, model: Path) -> Path:
    """The case's config (and its files) in ``tmp``; returns the config's path."""
    for name, content in {**STRATEGY_MODULES, **case.files}.items():
        target = tmp / name
        if name.endswith("/"):
            target.mkdir(parents=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    data = (
        case.data if case.data is not None else GOOD_ALPACA if case.dataset.get("type") == "alpaca" else GOOD
    )
    (tmp / "data.jsonl").write_bytes(data if isinstance(data, bytes) else data.encode())
    first_chat_rows(tmp / "chat.jsonl", 2)
    (tmp / "conf").mkdir()
    (tmp / "conf" / "beside").mkdir()
    (tmp / "conf" / "besidedata.jsonl").write_text(GOOD)
    config = tmp / "conf" / "cfg.yaml"
    if case.config_text is not None:
        config.write_bytes(_fill(case.config_text, tmp, model).encode("utf-8", "surrogateescape"))
        return config
    dataset = _without_deleted(
        _fill({"path": str(tmp / "data.jsonl"), "type": "chat_template", **case.dataset}, tmp, model)
    )
    # Outputs beside the data (not in conf/), where the test looks for anything half-written.
    keys = {"output_dir": str(tmp / "out"), "dataset_prepared_path": str(tmp / "prepared"), **case.keys}
    keys = {key: None if value is DELETE else value for key, value in keys.items()}
    write_config(tmp / "conf", model, [dataset], **_fill(keys, tmp, model))
    return config


def test_the_table_is_large_and_every_id_is_unique():
    ids = [case.id for case in CASES]
    assert len(ids) >= 100
    assert len(set(ids)) == len(ids), [name for name, n in Counter(ids).items() if n > 1]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_is_one_clear_error(case, tmp_path, small_vocab_model_dir, capsys, monkeypatch):
    # Every case stops before a model is loaded and none reads a token id: the small-vocabulary
    # tiny model loads its tokenizer some 2 s faster in each of the 30-odd cases that load one.
    model = small_vocab_model_dir
    config = _write_case(case, tmp_path, model)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("badstrat", "brokenstrat"):
        sys.modules.pop(name, None)
    importlib.invalidate_caches()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    argv = case.argv or [case.command, str(config), *case.args]
    argv = [_fill(arg, tmp_path, model).replace("{cfg}", str(config)) for arg in argv]
    with contextlib.ExitStack() as held:
        if case.hold_lock:  # another run holds it (a second open file is a second holder)
            held.enter_context(exclusive_lock(tmp_path / case.hold_lock, "another run"))
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        code = main(argv)

    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err + out
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors, err
    first = errors[0]
    for fragment in case.expect:
        assert _fill(fragment, tmp_path, model) in first, (first, err)
    created = sorted(set(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) - set(before))
    assert not [p for p in created if p.parts[0] in ("out", "prepared") and (tmp_path / p).is_file()], created
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_the_troubleshooting_page_lists_the_table_by_category():
    page = (Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md").read_text()
    section = page.split("## Bad inputs ftk is tested on", 1)[1]
    listed = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1].isdigit():
            listed[cells[0]] = int(cells[1])
    assert listed == dict(Counter(case.category for case in CASES))
    assert f"one table of {len(CASES)} bad inputs" in section
