"""Eval during training (token-mean loss, perplexity, best checkpoint) and the experiment trackers.

The training runs use the small-vocabulary tiny model (``small_vocab_model_dir``): nothing checked
here depends on the vocabulary, and each run is faster on it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from tests.helpers import SMALL_LORA, first_chat_rows, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat24(tmp_path_factory) -> Path:
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 24)


# A 4-step LoRA run of 2-row steps on 18 rows, 6 more held out for eval.
BASE = dict(
    **SMALL_LORA,
    sequence_len=256,
    max_steps=4,
    learning_rate=5.0e-3,
    lr_scheduler="constant",
    val_set_size=6,
    seed=5,
)


def test_eval_logs_token_mean_loss_and_perplexity_and_tracks_the_best_checkpoint(
    tmp_path, small_vocab_model_dir, chat24
):
    checkpoints = {"eval_steps": 2, "save_steps": 2, "save_total_limit": 1}
    cfg, manager = load_config(write_config(tmp_path, small_vocab_model_dir, chat24, **BASE, **checkpoints))
    result = run_training(cfg, manager)
    out = tmp_path / "out"
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [entry for entry in entries if "eval_loss" in entry]
    assert [entry["step"] for entry in evals] == [2, 4]
    eval_rows = result.data.eval
    trained = sum(sum(1 for label in row["labels"][1:] if label != -100) for row in eval_rows)
    for entry in evals:
        assert entry["eval_perplexity"] == pytest.approx(math.exp(entry["eval_loss"]))
        assert entry["eval_tokens"] == trained
    assert result.eval_loss == evals[-1]["eval_loss"]

    best_step = min(evals, key=lambda entry: entry["eval_loss"])["step"]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(out / f"checkpoint-{best_step}")
    assert state["best_metric"] == pytest.approx(min(entry["eval_loss"] for entry in evals))
    kept = sorted(path.name for path in out.glob("checkpoint-*"))
    assert kept == sorted({f"checkpoint-{best_step}", "checkpoint-4"})  # the best survives the limit of 1
    assert not list(out.glob(".incomplete-*"))


def test_tensorboard_receives_the_training_loss(tmp_path, small_vocab_model_dir, chat24):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, manager = load_config(
        write_config(tmp_path, small_vocab_model_dir, chat24, **BASE, report_to=["tensorboard"])
    )
    run_training(cfg, manager)
    out = tmp_path / "out"
    logged = json.loads("[" + ",".join((out / "metrics.jsonl").read_text().splitlines()) + "]")
    losses = [entry["loss"] for entry in logged if "loss" in entry]
    (run_dir,) = (out / "runs").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [event.step for event in scalars] == [1, 2, 3, 4]
    assert [event.value for event in scalars] == pytest.approx(losses, rel=1e-6)


def test_wandb_offline_writes_a_local_run(tmp_path, small_vocab_model_dir, chat24, monkeypatch):
    pytest.importorskip("wandb")
    for variable in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = {"wandb_project": "ftk-test", "wandb_mode": "offline", "wandb_name": "tiny-run"}
    cfg, manager = load_config(write_config(tmp_path, small_vocab_model_dir, chat24, **BASE, **wandb))
    run_training(cfg, manager)
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    assert "WANDB_MODE" not in os.environ  # the settings went to wandb.init, not into the environment
