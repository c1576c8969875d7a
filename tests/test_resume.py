"""Checkpoints and clean stops: exact resume, SIGTERM, SIGKILL mid-save, NaN, out of memory.

The runs train the small-vocabulary tiny model (``small_vocab_model_dir``): nothing checked here
depends on the vocabulary, and its tokenizer and output layer make each of the 14 runs faster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from ftk.cli import main
from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from tests.helpers import SMALL_LORA, first_chat_rows, write_config

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat16(tmp_path_factory) -> Path:
    """16 short conversations: with micro_batch_size 2 and accumulation 2, four steps per epoch."""
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 16)


# A 6-step LoRA run of 4-row steps (2 x 2) on a cosine schedule; run_events stops or breaks a run on cue.
BASE = dict(
    **SMALL_LORA,
    lora_dropout=0.1,
    sequence_len=256,
    gradient_accumulation_steps=2,
    max_steps=6,
    learning_rate=3.0e-3,
    lr_scheduler="cosine",
    warmup_steps=2,
)
EVENTS = ["tests.fixture_plugins.run_events"]


def train_losses(out: Path) -> dict[int, float]:
    """Step -> logged training loss, from metrics.jsonl."""
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {entry["step"]: entry["loss"] for entry in entries if "loss" in entry}


def run(config: Path, *overrides: str) -> int:
    return main(["train", str(config), *overrides])


@pytest.mark.parametrize(
    ("packing", "stop_at"),
    [(False, 3), (True, 3), (True, 5)],
    ids=["padded-mid-epoch", "packed-mid-epoch", "packed-second-epoch"],
)
def test_stop_and_resume_reproduces_the_uninterrupted_losses(
    tmp_path, small_vocab_model_dir, chat16, packing, stop_at
):
    keys = {**BASE, "sample_packing": packing}
    straight_out = tmp_path / "straight"
    straight = write_config(
        tmp_path, small_vocab_model_dir, chat16, "straight.yaml", output_dir=straight_out, **keys
    )
    assert run(straight) == 0
    expected = train_losses(straight_out)
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]

    out = tmp_path / "resumed"
    events = {"plugins": EVENTS, "events": {"signal_at_step": stop_at}}
    stopped = write_config(
        tmp_path, small_vocab_model_dir, chat16, "stopped.yaml", output_dir=out, **keys, **events
    )
    assert run(stopped) == 0
    assert (out / f"checkpoint-{stop_at}" / "trainer_state.json").is_file()
    assert not (out / "adapter_model.safetensors").exists()  # a stopped run saves no final model
    assert sorted(train_losses(out)) == list(range(1, stop_at + 1))

    resumed = write_config(tmp_path, small_vocab_model_dir, chat16, "resumed.yaml", output_dir=out, **keys)
    assert run(resumed, "--auto_resume", "true") == 0
    got = train_losses(out)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step
    assert (out / "adapter_model.safetensors").is_file()


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path, small_vocab_model_dir, chat16, capsys):
    out = tmp_path / "out"
    config = write_config(
        tmp_path, small_vocab_model_dir, chat16, plugins=EVENTS, events={"signal_at_step": 2}, **BASE
    )
    assert run(config) == 0
    checkpoint = out / "checkpoint-2"
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    printed = capsys.readouterr()
    assert "stopped by SIGTERM at step 2" in printed.out + printed.err
    assert "stopped by SIGTERM at step 2" in (out / "summary.md").read_text()
    # The SIGTERM handler is gone once the run ended.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigkill_while_saving_leaves_the_previous_checkpoint_for_auto_resume(
    tmp_path, small_vocab_model_dir, chat16
):
    out = tmp_path / "out"
    events = {"plugins": EVENTS, "events": {"kill_while_saving_step": 4}, "save_steps": 2}
    config = write_config(tmp_path, small_vocab_model_dir, chat16, **BASE, **events)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.run(
        [sys.executable, "-m", "ftk.cli", "train", str(config), "--lr_scheduler", "kill_while_saving"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert "checkpoint-2" in names and "checkpoint-4" not in names, names
    assert ".incomplete-checkpoint-4" in names  # the interrupted save, under a name nothing mistakes
    # The previous checkpoint is whole: the adapter loads onto the base model.
    base = AutoModelForCausalLM.from_pretrained(small_vocab_model_dir)
    PeftModel.from_pretrained(base, out / "checkpoint-2")

    again = write_config(
        tmp_path, small_vocab_model_dir, chat16, "again.yaml", save_steps=2, auto_resume=True, **BASE
    )
    cfg, manager = load_config(again)
    result = run_training(cfg, manager)
    assert result.global_step == 6
    assert not (out / ".incomplete-checkpoint-4").exists()
    assert sorted(train_losses(out)) == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6


def test_nan_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(
    tmp_path, small_vocab_model_dir, chat16, capsys
):
    out = tmp_path / "out"
    events = {"plugins": EVENTS, "events": {"nan_at_step": 5}, "save_steps": 2}
    config = write_config(tmp_path, small_vocab_model_dir, chat16, **BASE, **events)
    assert run(config) == 1
    message = capsys.readouterr().err
    assert "training diverged, step 5: loss nan" in message
    assert f"the last good checkpoint is {out / 'checkpoint-4'}" in message
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert max(train_losses(out)) == 5
    assert not (out / "adapter_model.safetensors").exists()


def test_out_of_memory_names_what_to_lower(tmp_path, small_vocab_model_dir, chat16, capsys):
    config = write_config(
        tmp_path, small_vocab_model_dir, chat16, plugins=EVENTS, events={"oom_at_step": 2}, **BASE
    )
    assert run(config) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    message = errors[0]
    assert message.startswith(
        "error: out of memory at step 2 (CUDA out of memory. Tried to allocate 2.00 GiB)"
    )
    assert "micro_batch_size (now 2" in message and "sequence_len (now 256)" in message
    assert "gradient_checkpointing: true" in message
    assert "Traceback" not in message


def test_step_health_reads_the_loss_and_a_tensor_or_float_grad_norm_and_resets():
    from types import SimpleNamespace

    from ftk.core.trainer import FtkTrainer

    state = SimpleNamespace(_step_loss=torch.tensor(2.5), last_grad_norm=torch.tensor(float("inf")))
    assert FtkTrainer._step_health(state) == (2.5, float("inf"))  # a tensor norm (Trainer's own)
    assert state._step_loss.item() == 0.0 and state.last_grad_norm is None
    state._step_loss += 1.25
    state.last_grad_norm = 0.75  # DeepSpeed hands over a float
    assert FtkTrainer._step_health(state) == (1.25, 0.75)
    assert FtkTrainer._step_health(state) == (0.0, None)  # no clipping: no norm
