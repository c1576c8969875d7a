"""``ftk eval``: the token-mean loss over the whole eval set, whatever the batching, for a base model,
an adapter (with its own tokenizer) or a full model directory."""

from __future__ import annotations

import json
import math
import re
from itertools import islice
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.data.packing import pack_lengths
from ftk.core.data.pipeline import prepare_data
from ftk.core.model import load_tokenizer
from tests.helpers import write_config

REPO = Path(__file__).resolve().parents[1]
CHAT = REPO / "examples" / "data" / "sgd_chat_600.jsonl"
SEQUENCE_LEN = 1024  # room for two to four eval examples per packed row
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("eval")
    with CHAT.open() as source:
        (directory / "chat.jsonl").write_text("".join(islice(source, 48)))
    return directory


# Eval configs: 8 of the 48 chats held out (val_set_size), no max_steps.
BASE = dict(sequence_len=SEQUENCE_LEN, max_steps=None, val_set_size=8)


@pytest.fixture(scope="module")
def config(workdir, sharp_model_dir) -> Path:
    return write_config(workdir, sharp_model_dir, workdir / "chat.jsonl", **BASE)


def eval_rows(config: Path, tokenizer=None):
    cfg, manager = load_config(config)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg, manager.hooks)[0]
    return prepare_data(cfg, tokenizer, manager.collect_registrations()).eval


@torch.no_grad()
def token_mean_loss(model: torch.nn.Module, rows) -> tuple[float, int, list[float]]:
    """Plain forward per example: (mean loss over all trained tokens, their count, per-example means).

    The log-softmax is taken in float32, the precision the model computes in; sums are float64.
    """
    model.eval()
    total, count, means = 0.0, 0, []
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        targets = torch.tensor(row["labels"])[1:]
        log_probs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        trained = targets.ne(-100)
        losses = -log_probs[trained].gather(1, targets[trained][:, None]).double()
        total += float(losses.sum())
        count += int(trained.sum())
        means.append(float(losses.mean()))
    return total / count, count, means


@pytest.fixture(scope="module")
def reference(config, sharp_model_dir) -> tuple[float, int, list[float]]:
    model = AutoModelForCausalLM.from_pretrained(sharp_model_dir, dtype=torch.float32)
    return token_mean_loss(model, eval_rows(config))


def eval_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1, out  # one JSON object, nothing else on stdout
    return json.loads(out)


def test_json_result_is_the_mean_over_every_trained_token(capsys, config, reference):
    loss, count, means = reference
    assert max(means) - min(means) > 0.5  # so a mean of per-batch means would be detectably off

    result = eval_json(capsys, str(config))

    assert set(result) == {"eval_loss", "eval_perplexity", "eval_tokens"}
    assert abs(result["eval_loss"] - loss) < TOLERANCE
    assert result["eval_perplexity"] == pytest.approx(math.exp(result["eval_loss"]), rel=1e-12)
    assert result["eval_tokens"] == count


@pytest.mark.parametrize(
    "overrides",
    [
        ["--micro_batch_size", "1"],
        ["--batch-size", "4"],
        ["--sample_packing", "true"],
    ],
    ids=["batch-1", "batch-4", "packed"],
)
def test_loss_does_not_depend_on_batching_or_packing(capsys, config, reference, overrides):
    loss, count, _ = reference
    result = eval_json(capsys, str(config), *overrides)
    assert abs(result["eval_loss"] - loss) < TOLERANCE
    assert result["eval_tokens"] == count


def test_packed_eval_rows_hold_several_examples(config):
    lengths = eval_rows(config)["length"]
    assert len(pack_lengths(lengths, SEQUENCE_LEN)) < len(lengths) / 2


def test_text_output_is_one_line(capsys, config, reference):
    loss, count, _ = reference
    assert main(["eval", str(config)]) == 0
    out = capsys.readouterr().out
    match = re.fullmatch(r"eval loss (\d+\.\d{4}), perplexity ([\d,]+\.\d), over ([\d,]+) tokens\n", out)
    assert match is not None, out
    assert float(match[1]) == pytest.approx(loss, abs=1e-4)
    assert float(match[2].replace(",", "")) == pytest.approx(math.exp(loss), rel=1e-3)
    assert int(match[3].replace(",", "")) == count


def test_adapter_is_evaluated_with_its_own_tokenizer(capsys, config, reference, sharp_model_dir, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(sharp_model_dir, dtype=torch.float32)
    adapted = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:  # zero at initialisation: the adapter would change nothing
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    adapted.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(sharp_model_dir)
    tokenizer.add_tokens(["the"])  # a token added in training changes how the eval text tokenizes
    tokenizer.save_pretrained(tmp_path)
    loss, count, _ = token_mean_loss(adapted, eval_rows(config, AutoTokenizer.from_pretrained(tmp_path)))

    result = eval_json(capsys, str(config), "--adapter", str(tmp_path))

    assert abs(result["eval_loss"] - loss) < TOLERANCE
    assert result["eval_tokens"] == count
    assert count != reference[1]  # the adapter's tokenizer was used, not the config's
    assert abs(loss - reference[0]) > 1e-2  # and the adapter matters


def test_full_model_directory(capsys, workdir, reference, tiny_model_dir, sharp_model_dir):
    # The config's base model is the untouched tiny model; --adapter names a full model directory.
    config = write_config(workdir, tiny_model_dir, workdir / "chat.jsonl", "tiny.yaml", **BASE)
    result = eval_json(capsys, str(config), "--adapter", str(sharp_model_dir))
    assert abs(result["eval_loss"] - reference[0]) < TOLERANCE
    assert result["eval_tokens"] == reference[1]


def test_no_eval_set_is_a_config_error(capsys, config):
    assert main(["eval", str(config), "--val_set_size", "0", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "val_set_size" in lines[0] and "test_datasets" in lines[0]


def test_adapter_directory_without_a_model_is_an_error(capsys, config, tmp_path):
    assert main(["eval", str(config), "--adapter", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --adapter: ") and "adapter_config.json" in err and err.count("\n") == 1
