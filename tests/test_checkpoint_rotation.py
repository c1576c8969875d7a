"""Checkpoint rotation touches this run's own checkpoints only; a resume refuses unsafe checkpoint files.

``save_total_limit`` deletes only complete ``checkpoint-<step>`` folders whose marker
(``ftk_checkpoint.json``) belongs to the run's lineage (the run and the runs it resumed); an
earlier unrelated run's checkpoints, marker-less folders and look-alikes such as
``checkpoint-5_backup/`` stay.  ``remove_incomplete`` deletes ftk's staging names only.
"""

from __future__ import annotations

import json
import pickle
import shutil
from io import StringIO
from pathlib import Path

import pytest
import torch
from rich.console import Console

from ftk.cli import main
from ftk.commands.train import run_training
from ftk.core import checkpoints
from ftk.core.checkpoints import Lineage
from ftk.core.lifecycle import prepare
from tests.helpers import SMALL_LORA, first_chat_rows, line_of, write_config

# --- unit: rotation and staging leftovers ---------------------------------------------------------


def fake_checkpoint(root: Path, step: int, lineage: Lineage | None) -> Path:
    """A complete-looking ``checkpoint-<step>`` (trainer state, marker of ``lineage`` when given)."""
    path = root / checkpoints.checkpoint_name(step)
    path.mkdir(parents=True)
    (path / checkpoints.TRAINER_STATE_FILE).write_text(json.dumps({"global_step": step}))
    if lineage is not None:
        checkpoints.write_marker(path, lineage, step)
    return path


def names(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


def test_remove_incomplete_deletes_only_ftk_staging_folders(tmp_path):
    for name in (
        ".incomplete-checkpoint-3",
        ".incomplete-final",
        ".incomplete-thesis-drafts",
        ".incomplete-checkpoint-3x",
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file.txt").write_text("x")
    removed = checkpoints.remove_incomplete(tmp_path)
    assert sorted(path.name for path in removed) == [".incomplete-checkpoint-3", ".incomplete-final"]
    assert names(tmp_path) == [".incomplete-checkpoint-3x", ".incomplete-thesis-drafts"]
    assert (tmp_path / ".incomplete-thesis-drafts" / "file.txt").read_text() == "x"


def test_rotation_deletes_only_older_checkpoints_of_its_own_lineage(tmp_path):
    earlier = Lineage("aaaaaaaaaaaa")
    resumed = Lineage("bbbbbbbbbbbb", earlier.ids)
    stranger = Lineage("cccccccccccc")
    for step in (1, 2):
        fake_checkpoint(tmp_path, step, earlier)
    fake_checkpoint(tmp_path, 9, earlier)  # the earlier run went further on another branch
    fake_checkpoint(tmp_path, 100000, stranger)
    fake_checkpoint(tmp_path, 3, None)  # no marker: not known to be this run's
    (tmp_path / "checkpoint-5_backup").mkdir()
    for step in (4, 5):
        fake_checkpoint(tmp_path, step, resumed)
    saved = fake_checkpoint(tmp_path, 6, resumed)

    deleted = checkpoints.rotate(tmp_path, resumed, 2, saved, best=str(tmp_path / "checkpoint-2"))

    # The limit of 2: the checkpoint just saved and the best; 1, 4 and 5 of this lineage go.
    assert sorted(path.name for path in deleted) == ["checkpoint-1", "checkpoint-4", "checkpoint-5"]
    assert names(tmp_path) == [
        "checkpoint-100000",
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-5_backup",
        "checkpoint-6",
        "checkpoint-9",
    ]
    assert checkpoints.rotate(tmp_path, resumed, None, saved) == []  # no limit: nothing deleted


def test_the_newest_fill_the_limit_when_the_best_is_the_one_just_saved(tmp_path):
    run = Lineage("dddddddddddd")
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step, run)
    saved = fake_checkpoint(tmp_path, 4, run)
    checkpoints.rotate(tmp_path, run, 2, saved, best=str(saved))
    assert names(tmp_path) == ["checkpoint-3", "checkpoint-4"]


def test_a_resumed_lineage_carries_the_ids_of_the_runs_before(tmp_path):
    first = Lineage("111111111111")
    checkpoint = fake_checkpoint(tmp_path, 2, first)
    second = Lineage.starting(checkpoint)
    assert second.ancestors == ("111111111111",) and second.run_id not in second.ancestors
    assert Lineage.starting(fake_checkpoint(tmp_path, 3, None)).ancestors == ()
    assert Lineage.starting(None).ancestors == ()


# --- unit: which checkpoint files load safely --------------------------------------------------------


class Pwned:
    """Unpickled without weights-only loading, this would call print("pwned")."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_invalid_checkpoint_files_are_named_without_running_them(tmp_path, capsys):
    good = fake_checkpoint(tmp_path, 1, None)
    torch.save({"state": {}, "param_groups": []}, good / "optimizer.pt")
    assert checkpoints.invalid_file(good) is None

    zipped = fake_checkpoint(tmp_path, 2, None)
    torch.save({"state": Pwned()}, zipped / "optimizer.pt")  # torch's own (zip) format
    problem = checkpoints.invalid_file(zipped)
    assert problem is not None and problem.startswith(
        f"{zipped / 'optimizer.pt'} is not a valid checkpoint file ("
    )
    assert "(refused by a weights-only load: unsupported global: GLOBAL print)" in problem

    state = fake_checkpoint(tmp_path, 3, None)
    (state / checkpoints.TRAINER_STATE_FILE).write_text("{not json")
    assert checkpoints.invalid_file(state).startswith(
        f"{state / 'trainer_state.json'} is not a valid checkpoint file"
    )

    weights = fake_checkpoint(tmp_path, 4, None)
    (weights / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    assert "adapter_model.safetensors is not a valid checkpoint file" in checkpoints.invalid_file(weights)
    assert "pwned" not in capsys.readouterr().out


def test_validate_refuses_a_checkpoint_whose_trainer_state_is_garbage(tmp_path, tiny_model_dir, capsys):
    checkpoint = fake_checkpoint(tmp_path / "old", 2, None)
    (checkpoint / checkpoints.TRAINER_STATE_FILE).write_text('["not", "a", "state"]')
    data = first_chat_rows(tmp_path / "chat.jsonl", 4)
    config = write_config(tmp_path, tiny_model_dir, data, resume_from_checkpoint=str(checkpoint))
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"error: {config}:{line_of(config, 'resume_from_checkpoint')}: resume_from_checkpoint: "
        f"{checkpoint / 'trainer_state.json'} is not a valid checkpoint file (no whole-number global_step "
        f"in it); it was not loaded: resume from another checkpoint, or delete {checkpoint} if it is damaged"
    )


# --- end to end: a run beside an earlier run's files ---------------------------------------------

RUN = dict(
    **SMALL_LORA,
    sequence_len=64,
    micro_batch_size=2,
    max_steps=3,
    save_steps=1,
    save_total_limit=1,
    learning_rate=1.0e-3,
)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_dir):
    """A 3-step run (a checkpoint each step, limit 1) into the folder of an earlier run of an old ftk.

    The folder already holds that run's ``checkpoint-100000`` (no marker), a user's
    ``checkpoint-5_backup/`` and ``ftk_config.yaml`` (how an ftk from before run markers marked
    its runs).  Returns (tmp directory, output_dir, the config, what the run printed).
    """
    tmp = tmp_path_factory.mktemp("rotation")
    out = tmp / "out"
    fake_checkpoint(out, 100000, None)
    (out / "checkpoint-5_backup").mkdir()
    (out / "checkpoint-5_backup" / "notes.txt").write_text("mine")
    (out / "ftk_config.yaml").write_text("base_model: old\n")
    data = first_chat_rows(tmp / "chat.jsonl", 8)
    config = write_config(tmp, tiny_model_dir, data, **RUN)
    printed = StringIO()
    prepared = prepare(config, purpose="train")
    run_training(prepared.cfg, prepared.manager, Console(file=printed, width=400))
    return tmp, out, config, printed.getvalue()


@pytest.mark.slow
def test_rotation_keeps_an_earlier_runs_checkpoints_and_the_users_folders(first_run):
    _, out, _, printed = first_run
    assert {"checkpoint-100000", "checkpoint-5_backup", "checkpoint-3"} <= set(names(out))
    assert not {"checkpoint-1", "checkpoint-2"} & set(names(out))  # this run's older ones, rotated
    assert (out / "checkpoint-5_backup" / "notes.txt").read_text() == "mine"
    marker = json.loads((out / "checkpoint-3" / checkpoints.CHECKPOINT_MARKER).read_text())
    run = json.loads((out / "ftk_run.json").read_text())
    assert marker["run_id"] == run["run_id"] and marker["lineage"] == [run["run_id"]]
    assert (
        f"note: {out} holds an earlier ftk run (from before run markers); this run starts a new run in it"
        in printed
    )


@pytest.mark.slow
def test_a_resumed_run_rotates_the_checkpoints_it_continues(first_run, tmp_path, capsys):
    tmp, original, config, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(original, out)
    first_id = json.loads((out / "ftk_run.json").read_text())["run_id"]
    assert (
        main(["train", str(config), "--output_dir", str(out), "--auto_resume", "true", "--max_steps", "5"])
        == 0
    )
    err = capsys.readouterr().err
    assert f"auto_resume: resuming from {out / 'checkpoint-3'} (ftk run {first_id})" in err
    kept = [name for name in names(out) if name.startswith("checkpoint-")]
    assert kept == ["checkpoint-100000", "checkpoint-5", "checkpoint-5_backup"]  # 3 and 4 rotated away
    marker = json.loads((out / "checkpoint-5" / checkpoints.CHECKPOINT_MARKER).read_text())
    assert marker["lineage"][0] == first_id and marker["run_id"] != first_id
    assert json.loads((out / "ftk_run.json").read_text())["resumed_from"] == str(out / "checkpoint-3")


@pytest.mark.slow
def test_a_malicious_optimizer_state_is_refused_in_one_line_and_never_run(first_run, tmp_path, capsys):
    tmp, original, config, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(original, out)
    evil = out / "checkpoint-3" / "optimizer.pt"
    evil.write_bytes(pickle.dumps({"state": Pwned()}))

    def files() -> dict[Path, int]:  # the lock file aside: holding it writes the holder's name
        return {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.name != ".ftk-run.lock"}

    before = files()

    code = main(["train", str(config), "--output_dir", str(out), "--auto_resume", "true", "--max_steps", "5"])

    captured = capsys.readouterr()
    assert code == 2
    assert "pwned" not in captured.out + captured.err
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith(
        f"error: auto_resume: {evil} is not a valid checkpoint file (refused by a weights-only load"
    )
    assert files() == before  # nothing else written


@pytest.mark.slow
def test_eval_names_the_run_an_adapter_came_from(first_run, capsys):
    _, out, config, _ = first_run
    run_id = json.loads((out / "ftk_run.json").read_text())["run_id"]
    assert main(["eval", str(config), "--adapter", str(out / "checkpoint-3"), "--val_set_size", "2"]) == 0
    assert f"adapter {out / 'checkpoint-3'}, trained by ftk run {run_id}; device " in (
        capsys.readouterr().err
    )
