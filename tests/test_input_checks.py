"""Config values, paths and the machine are checked before any data or model work (``lifecycle.prepare``).

Each bad input ends in one ``error:`` line that names the config file, the line and the key, with
exit code 2, and leaves nothing in ``output_dir`` or the data cache.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ftk.cli import main
from ftk.core.config import paths
from ftk.core.launch import as_rank_zero_of
from ftk.core.machine import bf16_problem
from tests.helpers import first_chat_rows, line_of, write_config


@pytest.fixture
def chat(tmp_path: Path) -> Path:
    return first_chat_rows(tmp_path / "chat.jsonl", 4)


def errors(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def nothing_written(directory: Path) -> bool:
    return not (directory / "out").exists() and not (directory / "prepared").exists()


# --- output_dir ---------------------------------------------------------------------------------


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create entries in (root ignores permission bits)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):
        return locked
    if Path("/proc/sys").is_dir() and not os.access("/proc/sys", os.W_OK):
        return Path("/proc/sys")
    pytest.skip("no directory here that this user cannot write in")


@pytest.mark.parametrize("command", ["train", "validate"])
@pytest.mark.parametrize("case", ["file", "parent-is-file", "not-writable", "empty"])
def test_an_output_dir_that_cannot_be_a_directory_stops_before_the_data(
    tmp_path, tiny_model_dir, chat, capsys, command, case
):
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    output_dir, message = {
        "file": (taken, f"{taken} is a file, not a directory"),
        "parent-is-file": (
            taken / "run",
            f"cannot create {taken / 'run'}: {taken} is a file, not a directory",
        ),
        "empty": ("", "String should have at least 1 character (got '')"),
    }.get(case, (None, None))
    if case == "not-writable":
        locked = unwritable_dir(tmp_path)
        output_dir = locked / "run"
        message = f"cannot create {output_dir}: cannot write in {locked} (permission denied)"
    path = write_config(tmp_path, tiny_model_dir, chat, output_dir=str(output_dir))
    assert main([command, str(path)]) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {path}:{line_of(path, 'output_dir')}: output_dir: {message}"
    ]
    assert taken.read_text() == "keep me" and not (tmp_path / "prepared").exists()


def test_a_data_cache_path_that_is_a_file_stops_preprocess(tmp_path, tiny_model_dir, chat, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    path = write_config(tmp_path, tiny_model_dir, chat, dataset_prepared_path=str(taken))
    assert main(["preprocess", str(path)]) == 2
    line = line_of(path, "dataset_prepared_path")
    assert errors(capsys.readouterr().err) == [
        f"error: {path}:{line}: dataset_prepared_path: {taken} is a file, not a directory"
    ]


def test_output_dir_may_not_be_the_base_model(tmp_path, tiny_model_dir, chat, capsys):
    path = write_config(tmp_path, tiny_model_dir, chat, output_dir=str(tiny_model_dir))
    assert main(["train", str(path)]) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {path}:{line_of(path, 'output_dir')}: output_dir: is the base_model directory; "
        "training would write over the base model"
    ]


# --- base_model and data paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["./models/nope", "ABSOLUTE", "models/tinyy", "a/b/c", "~/ftk-no-such-model"]
)
def test_a_base_model_that_is_no_directory_and_no_hub_id_says_so_first(
    tmp_path, chat, capsys, monkeypatch, value
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # models/tinyy: its first part is a local folder, so it is a path
    value = str(tmp_path / "missing") if value == "ABSOLUTE" else value
    path = write_config(tmp_path, value, chat)
    value = os.path.expanduser(value)  # the config's paths are expanded when it is read
    looked = Path(os.path.abspath(value))
    shown = "" if str(looked) == value else f" (looked for {looked})"
    for command in ("train", "validate", "preprocess"):
        assert main([command, str(path)]) == 2
        assert errors(capsys.readouterr().err) == [
            f"error: {path}:1: base_model: no such directory: {value}{shown}"
        ]
    assert nothing_written(tmp_path)


def test_relative_paths_are_read_from_the_working_directory_not_the_config(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "model").symlink_to(tiny_model_dir)
    first_chat_rows(project / "data" / "chat.jsonl", 4)
    path = write_config(project, "model", "data/chat.jsonl")
    monkeypatch.chdir(tmp_path)  # the config's relative paths are not here
    assert main(["train", str(path)]) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {path}:1: base_model: model is not in the working directory ({tmp_path / 'model'}) but is "
        f"next to the config ({project / 'model'}); relative paths are read from the working directory: "
        f"run ftk from {project} or write the path as {project / 'model'}",
        f"error: {path}:3: datasets[0].path: data/chat.jsonl is not in the working directory "
        f"({tmp_path / 'data/chat.jsonl'}) but is next to the config ({project / 'data/chat.jsonl'}); "
        f"relative paths are read from the working directory: run ftk from {project} or write the "
        f"path as {project / 'data/chat.jsonl'}",
    ]
    monkeypatch.chdir(project)  # from the config's folder the same file validates
    assert main(["validate", str(path)]) == 0


@pytest.mark.parametrize("data", ["missing.jsonl", "./folder", "gone/data.parquet", "rows.jsonl.gz"])
def test_a_missing_local_dataset_is_an_error_of_validate(tmp_path, tiny_model_dir, capsys, monkeypatch, data):
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, tiny_model_dir, data)
    assert main(["validate", str(path)]) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {path}:3: datasets[0].path: no such file or directory: {data} "
        f"(looked for {os.path.abspath(tmp_path / data)})"
    ]


def test_a_hub_id_missing_from_the_cache_while_offline_fails_at_once(tmp_path, chat, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path, "ftk-tests/not-a-cached-model", chat)
    message = (
        f"{path}:1: base_model: ftk-tests/not-a-cached-model is not a local directory and not in the "
        f"Hugging Face cache ({constants.HF_HUB_CACHE}), and the Hub is offline (HF_HUB_OFFLINE=1): "
        "download it where the Hub is reachable (hf download ftk-tests/not-a-cached-model) or give a "
        "local directory"
    )
    assert main(["train", str(path)]) == 2
    assert errors(capsys.readouterr().err) == [f"error: {message}"]
    assert nothing_written(tmp_path)
    # validate checks the config; a machine that cannot reach the model gets a note
    assert main(["validate", str(path)]) == 0
    assert f"note: this machine cannot train it: {message}" in capsys.readouterr().out


def test_path_or_hub_id():
    here = Path(".")
    for value in ("./m", "../m", "/m", "~/m", "a/b/c", "m/", "a//b", "bad name", "a/b--c"):
        assert paths.looks_like_path(value, here), value
    for value in ("gpt2", "Qwen/Qwen3-0.6B", "org/model.v2", "s3://bucket/models/m"):
        assert not paths.looks_like_path(value, here), value
    assert paths.dataset_problem("s3://bucket/data/rows.jsonl", here) is None  # for the loader to fetch


def test_data_suffixes_are_those_the_loader_reads():
    from ftk.core.data.sources import EXTENSION_BUILDERS

    assert set(paths.DATA_SUFFIXES) == set(EXTENSION_BUILDERS)


# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "val_set_size",
            1.5,
            "must be a share of the rows below 1 (0.05 holds out 5%) or a whole number of rows (got 1.5)",
        ),
        ("sequence_len", True, "must be a number, not true"),
        ("micro_batch_size", False, "must be a number, not false"),
        ("learning_rate", True, "must be a number, not true"),
        ("lora_r", True, "must be a number, not true"),
        ("learning_rate", float("inf"), "Input should be a finite number (got inf)"),
        ("weight_decay", float("inf"), "Input should be a finite number (got inf)"),
        ("seed", -1, "Input should be greater than or equal to 0 (got -1)"),
        ("seed", 2**32, "Input should be less than 4294967296 (got 4294967296)"),
        ("dataset_prepared_path", "", "String should have at least 1 character (got '')"),
        ("base_model", "", "String should have at least 1 character (got '')"),
        ("resume_from_checkpoint", "RUN", "RUN is not a complete checkpoint"),
    ],
)
def test_validate_rejects_values_training_would_misread(
    tmp_path, tiny_model_dir, chat, capsys, key, value, message
):
    if value == "RUN":
        value = str(tmp_path)
        message = message.replace("RUN", value)
    keys = {"adapter": "lora"} if key == "lora_r" else {}
    path = write_config(tmp_path, tiny_model_dir, chat, **keys, **{key: value})
    assert main(["validate", str(path)]) == 2
    [line] = errors(capsys.readouterr().err)
    assert line.startswith(f"error: {path}:{line_of(path, key)}: {key}: {message}")


@pytest.mark.parametrize("value", [0.05, 2, 1.0])
def test_val_set_size_is_a_share_below_one_or_a_whole_number_of_rows(tmp_path, tiny_model_dir, chat, value):
    assert main(["validate", str(write_config(tmp_path, tiny_model_dir, chat, val_set_size=value))]) == 0


# --- the machine ----------------------------------------------------------------------------------


def test_bf16_that_transformers_would_refuse_stops_before_the_data(tmp_path, tiny_model_dir, chat, capsys):
    problem = bf16_problem()
    if problem is None:
        pytest.skip("this machine trains in bfloat16")
    path = write_config(tmp_path, tiny_model_dir, chat, bf16=True)
    assert main(["train", str(path)]) == 2
    assert errors(capsys.readouterr().err) == [f"error: {path}:{line_of(path, 'bf16')}: bf16: {problem}"]
    assert nothing_written(tmp_path)
    assert main(["validate", str(path)]) == 0
    assert "note: this machine cannot train it: " in capsys.readouterr().out


def test_bf16_on_cpu_processes_is_what_transformers_accepts(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE")}
    with as_rank_zero_of(2):  # several CPU processes: use_cpu, where bf16 autocast trains
        assert bf16_problem() is None
    assert {name: os.environ.get(name) for name in before} == before


# --- several processes ----------------------------------------------------------------------------


@pytest.fixture
def no_launch(monkeypatch):
    def launched(*args, **kwargs):
        raise AssertionError("the launcher was started")

    monkeypatch.setattr(subprocess, "call", launched)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"fsdp": {}}, "error: fsdp: FSDP2 runs on CUDA GPUs and none is visible"),
        ({"lora_rnak": 8}, "lora_rnak: unknown key (did you mean 'lora_r'?)"),
        ({"output_dir": "TAKEN"}, "output_dir: TAKEN is a file, not a directory"),
    ],
    ids=["machine", "typo", "path"],
)
def test_several_processes_are_checked_once_by_the_launching_process(
    tmp_path, tiny_model_dir, chat, capsys, no_launch, keys, expected
):
    import torch

    if "fsdp" in keys and torch.cuda.is_available():
        pytest.skip("this machine can run FSDP")
    taken = tmp_path / "taken.txt"
    taken.write_text("")
    keys = {key: str(taken) if value == "TAKEN" else value for key, value in keys.items()}
    path = write_config(tmp_path, tiny_model_dir, chat, **keys)
    assert main(["train", str(path), "--nproc-per-node", "2"]) == 2
    [line] = errors(capsys.readouterr().err)
    assert expected.replace("TAKEN", str(taken)) in line
    assert nothing_written(tmp_path)


def test_nproc_per_node_below_one_is_an_error(tmp_path, tiny_model_dir, chat, capsys, no_launch, monkeypatch):
    import ftk.commands.train as train

    monkeypatch.setattr(train, "run_training", lambda *a: pytest.fail("trained"))
    path = write_config(tmp_path, tiny_model_dir, chat)
    assert main(["train", str(path), "--nproc-per-node", "0"]) == 2
    assert errors(capsys.readouterr().err) == ["error: --nproc-per-node: must be at least 1, not 0"]


WORKER = """\
import os, signal, sys, time
if os.environ["RANK"] == "0":
    if sys.argv[1] == "error":
        print("error: data.jsonl:4: messages: missing", file=sys.stderr)
        sys.exit(2)
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)  # the other process waits until the launcher stops it
"""


@pytest.mark.parametrize(
    ("how", "code", "lines"),
    [
        ("error", 2, ["error: data.jsonl:4: messages: missing"]),
        ("killed", 1, ["error: training process 0 was stopped by SIGKILL"]),
    ],
)
def test_a_failed_process_is_reported_by_its_own_line_and_exit_code(tmp_path, how, code, lines):
    """What ftk train --nproc-per-node runs: a process's error line, its exit code, no launcher traceback."""
    from ftk.commands.train import launcher_command

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [*launcher_command(2, [])[:-2], str(script), how]  # the launcher, running the script
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode == code, process.stderr[-3000:]
    assert errors(process.stderr) == lines
    assert process.stderr.strip().splitlines() == lines  # nor the launcher's log lines
