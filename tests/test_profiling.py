"""The profiling plugin: a Chrome trace of the chosen steps, the top operations, and its config keys.

The training runs use the small-vocabulary tiny model (``small_vocab_model_dir``): nothing checked
here depends on the vocabulary, and each run is faster on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import TrainerControl, TrainerState, TrainingArguments

from ftk.cli import main
from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from ftk.core.errors import FtkError
from ftk.plugins import profiling
from ftk.plugins.profiling import (
    ProfilerSettings,
    ProfileWindow,
    StepProfilerCallback,
    format_bytes,
    render_text,
    top_ops_tables,
)
from tests.helpers import SMALL_LORA, first_chat_rows, write_config

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::matmul", "aten::bmm", "aten::linear"}


@pytest.fixture(scope="module")
def chat16(tmp_path_factory) -> Path:
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 16)


# A 4-step LoRA run of one row a step.
BASE = dict(
    **SMALL_LORA,
    sequence_len=128,
    micro_batch_size=1,
    gradient_accumulation_steps=1,
    max_steps=4,
    learning_rate=1.0e-3,
)


def train(tmp_path: Path, model_dir: Path, data: Path, extra: str) -> Path:
    cfg, manager = load_config(write_config(tmp_path, model_dir, data, "c.yaml", extra, **BASE))
    result = run_training(cfg, manager)
    assert result.global_step == 4
    return tmp_path / "out" / "profiler"


def table_rows(text: str, title: str) -> list[list[str]]:
    """The cells of each row of the rich table titled ``title`` in ``text``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):  # the table's bottom border
            break
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│ ").split("│")])
    return rows


def step_markers(events: list[dict]) -> dict[str, dict]:
    return {event["name"]: event for event in events if event.get("name", "").startswith("ProfilerStep#")}


@pytest.mark.slow
def test_profiles_the_window_into_a_chrome_trace_and_top_ops(tmp_path, small_vocab_model_dir, chat16, capsys):
    folder = train(tmp_path, small_vocab_model_dir, chat16, "profiler_steps_start: 1\nprofiler_steps: 2\n")
    assert sorted(p.name for p in folder.iterdir()) == [
        "top_ops.txt",
        "trace_rank0.json",
    ]  # no snapshot on CPU

    events = json.loads((folder / "trace_rank0.json").read_text())["traceEvents"]
    markers = step_markers(events)
    assert sorted(markers) == ["ProfilerStep#2", "ProfilerStep#3"]  # steps 2 and 3, as the logs number them
    begin = min(marker["ts"] for marker in markers.values())
    end = max(marker["ts"] + marker["dur"] for marker in markers.values())
    matmuls = [event for event in events if event.get("name") in MATMUL_OPS]
    assert matmuls
    assert all(begin <= event["ts"] and event["ts"] + event.get("dur", 0) <= end for event in matmuls)

    text = (folder / "top_ops.txt").read_text()
    assert text.startswith("profiler: steps 2-3; ")
    rows = table_rows(text, "top operations by self CPU time")
    assert len(rows) == 15  # row_limit's default
    self_cpu = [float(row[2]) for row in rows]
    assert self_cpu == sorted(self_cpu, reverse=True) and self_cpu[0] > 0
    assert not any(row[0].startswith("ProfilerStep") for row in rows)
    assert any(row[0] in MATMUL_OPS for row in rows)
    memory_rows = table_rows(text, "top operations by self CPU memory")
    assert len(memory_rows) == 15 and all(row[-1].endswith("B") for row in memory_rows)

    printed = capsys.readouterr().err
    assert "profiler: steps 2-3; " in printed
    assert "top operations by self CPU time" in printed
    assert rows[0][0] in printed
    assert f"profiler: wrote {folder / 'trace_rank0.json'}, {folder / 'top_ops.txt'}" in printed


@pytest.mark.slow
def test_a_window_after_the_last_step_profiles_nothing_and_says_so(
    tmp_path, small_vocab_model_dir, chat16, capsys
):
    folder = train(tmp_path, small_vocab_model_dir, chat16, "profiler_steps_start: 4\nprofiler_steps: 2\n")
    assert not folder.exists()
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("profiler:")]
    assert notes == ["profiler: steps 5-6 asked for, but the run's last step is 4; nothing was profiled"]


@pytest.mark.slow
def test_a_window_past_the_end_profiles_the_steps_that_ran(tmp_path, small_vocab_model_dir, chat16, capsys):
    extra = "profiler_steps_start: 3\nprofiler_steps: 5\nprofiler:\n  row_limit: 3\n  profile_memory: false\n"
    folder = train(tmp_path, small_vocab_model_dir, chat16, extra)
    events = json.loads((folder / "trace_rank0.json").read_text())["traceEvents"]
    assert sorted(step_markers(events)) == ["ProfilerStep#4"]
    text = (folder / "top_ops.txt").read_text()
    assert text.startswith("profiler: step 4 of steps 4-8 (the run ended after step 4); ")
    rows = table_rows(text, "top operations by self CPU time")
    assert len(rows) == 3 and len(rows[0]) == 4  # operation, calls, self CPU ms, CPU total ms
    assert "; times summed over the window" in text
    assert "mem" not in text  # no memory table or column without profile_memory
    assert "profiler: step 4 of steps 4-8" in capsys.readouterr().err


def test_top_ops_tables_sort_by_self_time_and_memory():
    settings = ProfilerSettings(row_limit=3)
    with torch.profiler.profile(profile_memory=True) as profiler:
        with torch.profiler.record_function("ProfilerStep#1"):
            big = torch.randn(256, 256)
            for _ in range(5):
                big = big @ big
            torch.zeros(8).sum()
            sum(range(100_000))  # Python time outside any operation: the marker's own self time
    time_table, memory_table = top_ops_tables(list(profiler.key_averages()), on_cuda=False, settings=settings)
    assert [column.header for column in time_table.columns] == [
        "operation",
        "calls",
        "self CPU ms",
        "CPU total ms",
        "self CPU mem",
    ]
    rows = table_rows(render_text([time_table]), "top operations by self CPU time")
    assert len(rows) == 3 and rows[0][:2] == ["aten::mm", "5"]  # the five products, largest self time
    assert not any(row[0].startswith("ProfilerStep") for row in rows)  # the marker is no operation
    times = [float(row[2]) for row in rows]
    assert times == sorted(times, reverse=True)
    memory_rows = table_rows(render_text([memory_table]), "top operations by self CPU memory")
    # Five 256x256 float32 products allocate 5 * 256 KiB.
    assert memory_rows[0] == ["aten::mm", "5", rows[0][2], rows[0][3], "1.25 MiB"]

    # On CUDA: a table by self CUDA time as well, CUDA columns, and CUDA memory instead of CPU memory.
    cuda_tables = top_ops_tables(list(profiler.key_averages()), on_cuda=True, settings=settings)
    assert [table.title for table in cuda_tables] == [
        "top operations by self CPU time",
        "top operations by self CUDA time",
        "top operations by self CUDA memory",
    ]
    assert [column.header for column in cuda_tables[0].columns][2:] == [
        "self CPU ms",
        "CPU total ms",
        "self CUDA ms",
        "CUDA total ms",
        "self CUDA mem",
    ]


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.50 KiB"),
        (-3 * 1024**2, "-3.00 MiB"),
        (5 * 1024**3, "5.00 GiB"),
    ],
)
def test_format_bytes(count, shown):
    assert format_bytes(count) == shown


def test_the_keys_validate_and_load(tmp_path):
    extra = "profiler_steps_start: 3\nprofiler_steps: 2\nprofiler:\n  row_limit: 5\n  with_stack: true\n"
    cfg, _ = load_config(write_config(tmp_path, "some/model", "data.jsonl", "c.yaml", extra, **BASE))
    window = profiling.profile_window(cfg)
    assert (window.start, window.steps, window.end) == (3, 2, 5)
    assert window.settings == ProfilerSettings(row_limit=5, with_stack=True)
    assert window.describe() == "steps 4-5"
    (callback,) = profiling.trainer_callbacks(cfg)
    assert callback.directory == tmp_path / "out" / "profiler"

    plain, _ = load_config(write_config(tmp_path, "some/model", "data.jsonl", "p.yaml", **BASE))
    assert profiling.profile_window(plain) is None
    assert profiling.trainer_callbacks(plain) == []
    defaults = profiling.profile_window(
        load_config(write_config(tmp_path, "m", "d.jsonl", "d.yaml", "profiler_steps: 1\n", **BASE))[0]
    )
    assert (defaults.start, defaults.steps, defaults.settings) == (0, 1, ProfilerSettings())
    assert defaults.describe() == "step 1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "profiler:\n  row_limt: 5\nprofiler_steps: 1\n",
            "profiler.row_limt: unknown key (did you mean 'row_limit'?)",
        ),
        ("profiler_steps: 0\n", "profiler_steps: Input should be greater than 0"),
        (
            "profiler_steps: 1\nprofiler_steps_start: -1\n",
            "profiler_steps_start: Input should be greater than",
        ),
        ("profiler_step: 2\n", "profiler_step: unknown key (did you mean 'profiler_steps'?)"),
    ],
)
def test_bad_keys_fail_validation_with_exit_code_2(tmp_path, capsys, extra, message):
    config = write_config(tmp_path, "some/model", "data.jsonl", "c.yaml", extra, **BASE)
    assert main(["validate", str(config)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "key"),
    [("profiler_steps_start: 3\n", "profiler_steps_start"), ("profiler:\n  row_limit: 3\n", "profiler")],
)
def test_settings_without_profiler_steps_are_a_config_error(tmp_path, capsys, extra, key):
    config = write_config(tmp_path, "some/model", "data.jsonl", "c.yaml", extra, **BASE)
    assert main(["validate", str(config)]) == 2
    assert "c.yaml:" in capsys.readouterr().err
    with pytest.raises(FtkError, match=rf"c.yaml:\d+: {key}: set profiler_steps to profile"):
        load_config(config)


def test_row_limit_must_be_positive():
    with pytest.raises(ValidationError):
        ProfilerSettings(row_limit=0)


def drive(callback: StepProfilerCallback, tmp_path: Path, first_step: int, last_step: int) -> None:
    """Run ``callback`` through optimizer steps ``first_step + 1`` to ``last_step``, a matrix product each."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state, control = TrainerState(global_step=first_step, max_steps=last_step), TrainerControl()
    callback.on_train_begin(args, state, control)
    while state.global_step < last_step:
        callback.on_step_begin(args, state, control)
        torch.randn(64, 64) @ torch.randn(64, 64)
        state.global_step += 1
        callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)


def test_a_run_resumed_inside_the_window_profiles_the_rest_of_it(tmp_path, capsys):
    window = ProfileWindow(start=1, steps=3, settings=ProfilerSettings(row_limit=2))
    drive(StepProfilerCallback(window, str(tmp_path)), tmp_path, first_step=2, last_step=6)
    events = json.loads((tmp_path / "profiler" / "trace_rank0.json").read_text())["traceEvents"]
    assert sorted(step_markers(events)) == ["ProfilerStep#3", "ProfilerStep#4"]
    assert sum(event.get("name") == "aten::mm" for event in events) == 2
    heading = "profiler: steps 3-4 of steps 2-4; times and memory summed over the window"
    assert (tmp_path / "profiler" / "top_ops.txt").read_text().startswith(heading + "\n")
    assert heading in capsys.readouterr().err


def test_a_run_resumed_after_the_window_says_so(tmp_path, capsys):
    window = ProfileWindow(start=0, steps=2, settings=ProfilerSettings())
    drive(StepProfilerCallback(window, str(tmp_path)), tmp_path, first_step=3, last_step=5)
    assert not (tmp_path / "profiler").exists()
    assert capsys.readouterr().err.splitlines() == [
        "profiler: steps 1-2 asked for, but this run resumed after step 3; nothing was profiled"
    ]
