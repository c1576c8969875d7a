"""The run directory: ftk trains only into its own folders, and one run at a time holds each.

A non-empty ``output_dir`` that is no ftk run is refused (exit 2, one line naming the folder, a
few of its files and the two ways out) unless ``overwrite_output_dir: true`` / ``ftk train
--overwrite``; a second ``ftk train`` on a folder another run holds stops at once, naming it.
Neither writes anything.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from ftk.cli import main
from ftk.commands.train import run_training
from ftk.core import checkpoints, run_dir
from ftk.core.errors import FtkError
from ftk.core.locks import exclusive_lock
from tests.helpers import builtin_manager, first_chat_rows, line_of, make_config, write_config


@pytest.fixture
def chat(tmp_path: Path) -> Path:
    return first_chat_rows(tmp_path / "chat.jsonl", 4)


def foreign_folder(path: Path) -> dict[str, str]:
    """A folder of someone's work, as the issue found it overwritten; returns name -> content."""
    files = {
        "README.md": "# my notes\n",
        "tokenizer.json": "{}",
        "adapter_config.json": '{"mine": true}',
        "results.csv": "a,b\n",
    }
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return files


def unchanged(path: Path, files: dict[str, str]) -> bool:
    return sorted(p.name for p in path.iterdir()) == sorted(files) and all(
        (path / name).read_text() == text for name, text in files.items()
    )


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("command", ["train", "validate"])
def test_a_folder_of_someone_elses_files_is_refused_before_any_work(
    tmp_path, tiny_model_dir, chat, capsys, command
):
    out = tmp_path / "out"
    files = foreign_folder(out)
    config = write_config(tmp_path, tiny_model_dir, chat)
    assert main([command, str(config)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line == (
        f"error: {config}:{line_of(config, 'output_dir')}: output_dir: {out} is not empty and holds no "
        "ftk run (README.md, adapter_config.json, results.csv and 1 more); training would write over "
        "such files: choose an empty or new output_dir, or set overwrite_output_dir: true "
        "(ftk train --overwrite) to train into it anyway"
    )
    assert unchanged(out, files)
    assert not (tmp_path / "prepared").exists()


def test_run_training_checks_the_folder_again_under_the_lock(tmp_path, tiny_model_dir, chat):
    out = tmp_path / "out"
    cfg = make_config(base_model=tiny_model_dir, output_dir=out, dataset_prepared_path=tmp_path / "prepared")
    files = foreign_folder(out)  # appeared after validation: run_training looks again
    with pytest.raises(FtkError, match=rf"^output_dir: {out} is not empty and holds no ftk run \(README\.md"):
        run_training(cfg, builtin_manager())
    assert unchanged(out, files)  # not even the lock file is left


def test_overwrite_lets_a_run_into_such_a_folder(tmp_path, tiny_model_dir, chat, capsys, monkeypatch):
    import ftk.commands.train as train

    foreign_folder(tmp_path / "out")
    trained = []
    monkeypatch.setattr(train, "run_training", lambda cfg, manager: trained.append(cfg))
    config = write_config(tmp_path, tiny_model_dir, chat)
    assert main(["train", str(config), "--overwrite"]) == 0
    assert [cfg.overwrite_output_dir for cfg in trained] == [True]
    assert main(["validate", str(config), "--overwrite_output_dir", "true"]) == 0


@pytest.mark.parametrize(
    "entries",
    [
        [],
        [run_dir.LOCK_NAME, ".incomplete-checkpoint-4/", ".incomplete-final/", ".DS_Store"],
        ["ftk_config.yaml", "adapter_config.json"],  # a run of an ftk from before the marker
        [run_dir.RUN_MARKER, "README.md"],
        ["prepared/"],  # the config's own data cache, inside output_dir
    ],
    ids=["empty", "ftk-leftovers", "older-ftk-run", "ftk-run", "own-cache"],
)
def test_empty_folders_and_ftk_runs_are_accepted(tmp_path, entries):
    out = tmp_path / "out"
    out.mkdir()
    for entry in entries:
        (out / entry.rstrip("/")).mkdir() if entry.endswith("/") else (out / entry).write_text("{}")
    cfg = make_config(output_dir=out, dataset_prepared_path=out / "prepared")
    assert run_dir.ownership_problem(cfg) is None


def test_a_second_run_on_a_held_output_dir_stops_at_once_naming_the_holder(
    tmp_path, tiny_model_dir, chat, capsys
):
    out = tmp_path / "out"
    config = write_config(tmp_path, tiny_model_dir, chat)
    with exclusive_lock(out / run_dir.LOCK_NAME, f"output_dir {out}"):  # a run in progress
        assert main(["train", str(config)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(
        f"error: output_dir {out} is in use by process {os.getpid()} on {socket.gethostname()} (since "
    )
    assert line.endswith("; wait for it to finish")
    assert sorted(p.name for p in out.iterdir()) == [run_dir.LOCK_NAME]  # nothing else written
    assert not (tmp_path / "prepared").exists()  # stopped before the data


def test_a_run_that_fails_before_its_marker_leaves_no_folder(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": 3}]}\n')
    config = write_config(tmp_path, tiny_model_dir, bad, sequence_len=64)
    assert main(["train", str(config)]) == 2
    assert len(error_lines(capsys.readouterr().err)) == 1
    assert not (tmp_path / "out").exists()  # neither the lock file nor the folder it was created for


def test_the_run_marker_names_the_run_for_other_commands(tmp_path):
    cfg = make_config(output_dir=tmp_path / "out")
    lineage = checkpoints.Lineage("0123456789ab", ("ba9876543210",))
    run_dir.write_run_marker(tmp_path / "out", cfg, lineage, None)
    info = json.loads((tmp_path / "out" / run_dir.RUN_MARKER).read_text())
    assert info["run_id"] == "0123456789ab" and info["lineage"] == ["ba9876543210", "0123456789ab"]
    assert info["config_sha256"] == run_dir.config_digest(cfg) and info["ftk_version"]
    assert run_dir.origin(tmp_path / "out").startswith("ftk run 0123456789ab (started ")
    assert run_dir.last_lineage(tmp_path / "out") == lineage
    checkpoint = tmp_path / "out" / "checkpoint-2"
    checkpoint.mkdir()
    checkpoints.write_marker(checkpoint, lineage, 2)
    assert run_dir.origin(checkpoint) == "ftk run 0123456789ab"
    assert run_dir.origin(tmp_path) is None
