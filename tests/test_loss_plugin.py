"""A plugin named in ``plugins:`` replaces the loss, and its config section can turn it off."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftk.commands.train import run_training
from ftk.core.config.loader import load_config
from tests.helpers import first_chat_rows

EPSILON = 0.1
SHARPEN = 20.0
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with its (tied) embeddings scaled up, so that its logits are far from flat.

    At random initialisation every token is about equally likely, and label smoothing moves the
    loss by less than 0.001; with spread-out logits it moves it by more than 0.01.
    """
    out = tmp_path_factory.mktemp("sharp") / "model"
    shutil.copytree(tiny_model_dir, out)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(SHARPEN)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def two_chats(tmp_path_factory) -> Path:
    return first_chat_rows(tmp_path_factory.mktemp("data") / "chat.jsonl", 2)


def first_logged_loss(tmp_path: Path, model_dir: Path, data: Path, smoothing: str) -> tuple[float, list]:
    """Train one step on a batch holding both rows; return its logged loss and the tokenized rows."""
    tmp_path.mkdir()
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"""\
base_model: {model_dir}
datasets:
  - path: {data}
    type: chat_template
plugins: [tests.fixture_plugins.section_plugin]
smoothing: {smoothing}
sequence_len: 2048
micro_batch_size: 2
max_steps: 1
seed: 5
output_dir: {tmp_path / "out"}
dataset_prepared_path: {tmp_path / "prepared"}
"""
    )
    cfg, manager = load_config(path)
    result = run_training(cfg, manager)
    rows = list(result.data.train)
    assert len(rows) == 2  # so the first batch is the whole data set, whatever the order
    entries = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    return next(entry["loss"] for entry in entries if "loss" in entry), rows


def expected_losses(model_dir: Path, rows: list) -> tuple[float, float]:
    """(label-smoothed, plain) token-mean cross-entropy of the base model over ``rows``, row by row.

    Label smoothing with weight e: each trained token costs (1 - e) * -log p(target) plus
    e * the mean of -log p over the whole vocabulary.
    """
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    smoothed = plain = 0.0
    count = 0
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
            targets = torch.tensor(row["labels"][1:])
            trained = targets.ne(-100)
            neg_log_p = -torch.log_softmax(logits[trained].double(), dim=-1)
            target_cost = neg_log_p.gather(1, targets[trained].unsqueeze(1)).squeeze(1)
            plain += target_cost.sum().item()
            smoothed += ((1 - EPSILON) * target_cost + EPSILON * neg_log_p.mean(dim=-1)).sum().item()
            count += int(trained.sum())
    return smoothed / count, plain / count


@pytest.mark.slow
def test_section_plugin_replaces_the_loss_until_disabled(tmp_path, sharp_model_dir, two_chats):
    smoothed_loss, rows = first_logged_loss(
        tmp_path / "on", sharp_model_dir, two_chats, f"{{epsilon: {EPSILON}}}"
    )
    plain_loss, _ = first_logged_loss(tmp_path / "off", sharp_model_dir, two_chats, "{enabled: false}")

    expected_smoothed, expected_plain = expected_losses(sharp_model_dir, rows)
    # The trainer's float32 loss matches the float64 reference to about 1e-5; the two losses are
    # more than 50 times the tolerance apart, so each check tells which loss the trainer used.
    assert expected_smoothed - expected_plain > 50 * TOLERANCE
    assert smoothed_loss == pytest.approx(expected_smoothed, abs=TOLERANCE)
    assert plain_loss == pytest.approx(expected_plain, abs=TOLERANCE)
