"""Training-step correctness: the warmup's first step, resuming a finished run, a full disk while saving.

The runs train the small-vocabulary tiny model (``small_vocab_model_dir``): what is checked here
(learning rates, step and token counts, checkpoints, messages) does not depend on the vocabulary,
and its tokenizer and output layer make each run several seconds shorter.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from ftk.cli import main
from ftk.core.checkpoints import trainer_state
from ftk.plugins.optimizers import lr_multiplier
from tests.helpers import SMALL_LORA, first_chat_rows, write_config

# A 4-step LoRA run of 2-row steps on short rows: the cheapest run that saves, warms up and decays.
RUN = dict(**SMALL_LORA, sequence_len=128, max_steps=4, learning_rate=3.0e-3)
PROBE = ["tests.fixture_plugins.step_probe"]


@pytest.fixture(scope="module")
def chat8(tmp_path_factory) -> Path:
    """8 short conversations: four 2-row steps per epoch."""
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 8)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``directory``: its modification time (ns) and bytes (not the run's lock file)."""
    return {
        str(path.relative_to(directory)): (path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".ftk-run.lock"
    }


# --- the learning rate of each step ---------------------------------------------------------


@pytest.mark.parametrize("shape", ["linear", "cosine", "constant"])
def test_warmup_never_spends_a_step_at_learning_rate_zero(shape):
    # W = 2 warmup steps of T = 6: steps 1 and 2 run at 1/3 and 2/3 of the peak, step 3 at the peak.
    multipliers = [lr_multiplier(step, shape, 2, 6, 0.0) for step in range(6)]
    cosine = [(1 + math.cos(math.pi * p)) / 2 for p in (0.25, 0.5, 0.75)]
    decay = {"linear": [0.75, 0.5, 0.25], "cosine": cosine, "constant": [1.0, 1.0, 1.0]}[shape]
    assert multipliers == pytest.approx([1 / 3, 2 / 3, 1.0, *decay], rel=1e-6)
    assert lr_multiplier(0, shape, 1, 6, 0.0) == 0.5  # even one warmup step is not wasted


@pytest.mark.slow
def test_the_first_warmup_step_trains_and_each_logged_rate_is_the_rate_its_step_used(
    tmp_path, chat8, small_vocab_model_dir
):
    config = write_config(
        tmp_path, small_vocab_model_dir, chat8, plugins=PROBE, lr_scheduler="linear", warmup_steps=2, **RUN
    )
    assert main(["train", str(config)]) == 0
    out = tmp_path / "out"
    probe = jsonl(out / "step_probe.jsonl")
    used = [entry["lr_used"] for entry in probe]
    # Steps 1-2 warm up (1/3, 2/3 of 3e-3), step 3 is the peak, step 4 halfway down the linear decay.
    assert used == pytest.approx([1.0e-3, 2.0e-3, 3.0e-3, 1.5e-3], rel=1e-9)
    assert probe[0]["lora_b_norm"] > 0  # LoRA B starts at zero: only a real update moves it
    logged = {
        entry["step"]: entry["learning_rate"] for entry in jsonl(out / "metrics.jsonl") if "loss" in entry
    }
    assert [logged[step] for step in (1, 2, 3, 4)] == pytest.approx(used, rel=1e-9)


@pytest.mark.slow
def test_a_checkpoint_between_two_logged_steps_saves_the_token_count_of_its_own_step(
    tmp_path, chat8, small_vocab_model_dir
):
    # Logged at step 2 only; checkpoint-1's count is what a resumed run continues from.
    keys = {**RUN, "max_steps": 2, "save_steps": 1, "logging_steps": 2}
    assert main(["train", str(write_config(tmp_path, small_vocab_model_dir, chat8, **keys))]) == 0
    out = tmp_path / "out"
    saved = [trainer_state(out / f"checkpoint-{step}")["num_input_tokens_seen"] for step in (1, 2)]
    assert [entry["num_tokens"] for entry in jsonl(out / "metrics.jsonl") if "loss" in entry] == [saved[1]]
    assert 0 < saved[0] < saved[1]  # step 1's tokens, not the count of the last log (none yet)


# --- resuming a run that already finished ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("length", "resume", "where"),
    [
        ({"max_steps": 4, "save_steps": 2}, ["--auto_resume", "true"], "is at step 4 of 4 (max_steps)"),
        (
            {"max_steps": None, "num_epochs": 1, "save_steps": 4},
            ["--resume_from_checkpoint", "{out}/checkpoint-4"],
            "is at step 4, the end of epoch 1 (num_epochs)",
        ),
    ],
    ids=["max_steps-auto_resume", "epochs-resume_from_checkpoint"],
)
def test_resuming_a_finished_run_only_says_so(
    tmp_path, chat8, small_vocab_model_dir, capsys, length, resume, where
):
    config = write_config(tmp_path, small_vocab_model_dir, chat8, **{**RUN, **length})
    out = tmp_path / "out"
    assert main(["train", str(config)]) == 0
    assert (out / "checkpoint-4").is_dir() and (out / "adapter_model.safetensors").is_file()
    before = snapshot(out)
    capsys.readouterr()

    assert main(["train", str(config), *[arg.format(out=out) for arg in resume]]) == 0
    printed = capsys.readouterr()
    assert printed.out == ""
    key = "max_steps" if length["max_steps"] else "num_epochs"
    assert printed.err.splitlines() == [
        f"already finished: {out / 'checkpoint-4'} {where}; nothing to train (raise {key} to train further)"
    ]
    assert snapshot(out) == before  # no step 5, no new checkpoint, the final adapter untouched


# --- a full disk while saving -----------------------------------------------------------------


UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def size_of(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def stated_bytes(text: str) -> float:
    """``12.3 MiB`` -> bytes."""
    number, unit = text.split()
    return float(number) * UNITS[unit]


@pytest.mark.slow
def test_a_full_disk_at_checkpoint_2_keeps_checkpoint_1_and_removes_the_partial_one(
    tmp_path, chat8, small_vocab_model_dir, capsys, monkeypatch
):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if ".incomplete-checkpoint-2" in str(f):  # half a file written, then the disk is full
            Path(str(f)).write_bytes(b"\0" * 1024)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    config = write_config(tmp_path, small_vocab_model_dir, chat8, save_steps=1, **RUN)
    out = tmp_path / "out"
    assert main(["train", str(config)]) == 2
    errors = capsys.readouterr().err
    assert "Traceback" not in errors
    lines = [line for line in errors.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, errors
    good = out / "checkpoint-1"
    size = r"([\d.]+ (?:B|KiB|MiB|GiB))"
    match = re.fullmatch(
        re.escape(f"error: no space left on device while saving checkpoint-2 in {out}: it needs about ")
        + size
        + ", "
        + size
        + re.escape(
            f" free; the incomplete checkpoint was removed; the last good checkpoint is {good} "
            "(auto_resume: true continues from it)"
        ),
        lines[0],
    )
    assert match, lines[0]
    assert stated_bytes(match[1]) == pytest.approx(size_of(good), rel=0.01)  # as big as checkpoint-1
    names = sorted(path.name for path in out.iterdir())
    assert "checkpoint-1" in names and "checkpoint-2" not in names, names
    # No staging folder left (the run's lock file stays).
    assert not [name for name in names if name.startswith(".") and name != ".ftk-run.lock"], names
    assert "adapter_model.safetensors" not in names  # the run stopped: no final model
    monkeypatch.undo()
    base = AutoModelForCausalLM.from_pretrained(small_vocab_model_dir)
    PeftModel.from_pretrained(base, good)  # checkpoint-1 is whole


@pytest.mark.slow
def test_a_full_disk_during_the_final_save_leaves_no_half_written_model(
    tmp_path, chat8, small_vocab_model_dir, capsys, monkeypatch
):
    import peft.peft_model
    from safetensors import SafetensorError

    real_save_file = peft.peft_model.safe_save_file

    def save_file(tensors, filename, *args, **kwargs):
        if "checkpoint-" not in str(filename):  # the final save, not a checkpoint
            Path(filename).write_bytes(b"\0" * 512)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", save_file)
    config = write_config(tmp_path, small_vocab_model_dir, chat8, save_steps=2, **RUN)
    out = tmp_path / "out"
    assert main(["train", str(config)]) == 2
    errors = capsys.readouterr().err
    assert "Traceback" not in errors
    lines = [line for line in errors.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, errors
    assert lines[0].startswith(
        f"error: no space left on device while saving the trained model in {out}: it needs about "
    )
    assert f"the last good checkpoint is {out / 'checkpoint-4'}" in lines[0]
    names = sorted(path.name for path in out.iterdir())
    assert "adapter_model.safetensors" not in names and "adapter_config.json" not in names, names
    assert not [name for name in names if name.startswith(".") and name != ".ftk-run.lock"], names
    assert {"checkpoint-2", "checkpoint-4"} <= set(names)
