"""The example plugin distribution (examples/plugins/ftk-example-plugin), pip-installed as a user would.

Entry points exist only for installed distributions, so these tests need
``pip install -e examples/plugins/ftk-example-plugin``.  Without it they skip, unless
``FTK_REQUIRE_EXAMPLE_PLUGIN=1`` (set in CI): then they fail, so CI cannot skip them silently.
"""

from __future__ import annotations

import json
import math
import os
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from ftk.cli import main
from ftk.core.config.loader import load_config
from tests.helpers import line_of, write_config

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "examples" / "plugins" / "ftk-example-plugin"
DATA = PLUGIN_DIR / "data" / "capitals_qa.jsonl"
DIST = "ftk-example-plugin"
INSTALL = "pip install -e examples/plugins/ftk-example-plugin"
REQUIRE_VAR = "FTK_REQUIRE_EXAMPLE_PLUGIN"
X = -100
IM_END = 151645  # the tiny model's eos


def _installed() -> bool:
    try:
        distribution(DIST)
    except PackageNotFoundError:
        return False
    return True


INSTALLED = _installed()
REQUIRED = os.environ.get(REQUIRE_VAR) == "1"
needs_plugin = pytest.mark.skipif(
    not INSTALLED and not REQUIRED, reason=f"{DIST} is not installed (run: {INSTALL})"
)


def test_ci_cannot_skip_the_example_plugin():
    if REQUIRED:
        assert INSTALLED, f"{REQUIRE_VAR}=1 but {DIST} is not installed; run: {INSTALL}"
    if INSTALLED:
        # The installed copy must be this checkout's code (an editable install), not a stale one.
        import ftk_example_plugin

        assert Path(ftk_example_plugin.__file__).resolve().parent == PLUGIN_DIR / "ftk_example_plugin"


# Data preparation and validation only: no training keys unless a test sets them.
BASE = dict(shuffle_merged_datasets=False, sequence_len=128, micro_batch_size=None, max_steps=None, seed=None)


def qa_pairs(path: Path = DATA, **options) -> list[dict]:
    """The datasets entry for ``path`` with the plugin's qa_pairs strategy and its ``options``."""
    return [{"path": path, "type": "qa_pairs", **options}]


def plugin_row(table: str, name: str) -> tuple[str, str, list[str]]:
    """(source, version, hooks) of ``name`` in ``ftk plugins``'s table, joining wrapped hook cells."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if "│" in line]
    for index, row in enumerate(cells):
        if row[0] == name:
            hooks = row[3]
            for more in cells[index + 1 :]:
                if more[0]:
                    break
                hooks += " " + more[3]
            return row[1], row[2], [hook.strip() for hook in hooks.split(",")]
    raise AssertionError(f"{name!r} not in:\n{table}")


@needs_plugin
def test_ftk_plugins_lists_the_entry_point_and_its_hooks(capsys):
    eps = distribution(DIST).entry_points.select(group="ftk.plugins")
    assert [(ep.name, ep.value) for ep in eps] == [("example", "ftk_example_plugin")]
    assert main(["plugins"]) == 0
    source, version, hooks = plugin_row(capsys.readouterr().out, "example")
    assert (source, version) == ("entry point", distribution(DIST).version)
    assert hooks == ["register_config_sections", "register_prompt_strategies", "trainer_callbacks"]


@needs_plugin
def test_preprocess_trains_only_the_answer_and_eos(tmp_path, tiny_model_dir, tokenizer, capsys):
    cfg = write_config(tmp_path, tiny_model_dir, qa_pairs(), **BASE)
    assert main(["preprocess", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"question": "What is the capital of France?", "answer": "Paris."}

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt = encode("Q: What is the capital of France?\nA: ")
    answer = [*encode("Paris."), IM_END]
    train = datasets.load_from_disk(str(Path(report["cache_dir"]) / "train"))
    assert train[0]["input_ids"] == prompt + answer
    assert train[0]["labels"] == [X] * len(prompt) + answer
    assert tokenizer.decode([t for t in train[0]["labels"] if t != X]) == "Paris.<|im_end|>"

    # Every row: the counts are the template's tokens plus the answer's and the eos, all kept.
    trained = sum(len(encode(row["answer"])) + 1 for row in rows)
    prompts = sum(len(encode(f"Q: {row['question']}\nA: ")) for row in rows)
    (source,) = report["datasets"]
    assert (source["rows"], source["kept"], source["invalid"]) == (24, 24, 0)
    assert (report["trained_tokens"], report["tokens"]) == (trained, trained + prompts)


@needs_plugin
def test_options_rename_columns_change_the_template_and_train_on_inputs(tmp_path, tiny_model_dir, tokenizer):
    from ftk.core.data.pipeline import prepare_data

    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"q": "2+2?", "a": "4"}) + "\n" + json.dumps({"q": "3+4?"}) + "\n")
    options = {"field_question": "q", "field_answer": "a", "prompt_template": "Question: {question} Answer:"}
    cfg_path = write_config(
        tmp_path, tiny_model_dir, qa_pairs(data, **options), invalid_rows="skip", train_on_inputs=True, **BASE
    )
    cfg, manager = load_config(cfg_path)
    prepared = prepare_data(cfg, tokenizer, manager.collect_registrations(), use_cache=False)

    ids = tokenizer("Question: 2+2? Answer:", add_special_tokens=False)["input_ids"]
    ids += [*tokenizer("4", add_special_tokens=False)["input_ids"], IM_END]
    assert prepared.train["input_ids"] == [ids]
    assert prepared.train["labels"] == [ids]  # train_on_inputs: the prompt is trained too
    (source,) = prepared.sources
    assert (source.rows, source.kept, source.invalid) == (2, 1, 1)
    assert any("a: missing" in problem for problem in source.invalid_examples), source.invalid_examples


@needs_plugin
@pytest.mark.slow
def test_three_step_run_writes_a_log_line_per_step(tmp_path, small_vocab_model_dir):
    # A full fine-tune: on the small-vocabulary model the optimizer and the saved weights are a ninth the size.
    run = {"example": {"log_every": 1}, "max_steps": 3, "micro_batch_size": 2, "learning_rate": 1.0e-3}
    cfg = write_config(tmp_path, small_vocab_model_dir, qa_pairs(), **{**BASE, **run})
    assert main(["train", str(cfg)]) == 0
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "example_plugin.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    # The plugin saw the same losses ftk logged itself.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {entry["step"]: entry["loss"] for entry in metrics if "loss" in entry}
    assert [line["loss"] for line in lines] == [logged[1], logged[2], logged[3]]
    assert all(math.isfinite(line["loss"]) and line["learning_rate"] > 0 for line in lines)
    # And the run trained: the saved weights moved away from the base model's.
    base, tuned = load_file(small_vocab_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert base.keys() == tuned.keys()
    assert any(not torch.equal(base[name], tuned[name]) for name in base)


@needs_plugin
def test_callback_only_with_the_section_and_every_nth_training_step(tmp_path):
    from ftk_example_plugin.step_log import LOG_FILE, StepLogCallback

    model_dir = tmp_path / "model"  # validation only: no model is loaded
    cfg, manager = load_config(write_config(tmp_path, model_dir, qa_pairs(), **BASE))
    callbacks = manager.hooks.trainer_callbacks(cfg)
    assert not any(isinstance(cb, StepLogCallback) for cb in callbacks)

    cfg, manager = load_config(write_config(tmp_path, model_dir, qa_pairs(), example={}, **BASE))
    callbacks = manager.hooks.trainer_callbacks(cfg)
    (ours,) = [cb for cb in callbacks if isinstance(cb, StepLogCallback)]
    assert (ours.path, ours.log_every) == (tmp_path / "out" / LOG_FILE, 1)

    callback = StepLogCallback(str(tmp_path / "run"), log_every=2)
    args, state, control = (
        TrainingArguments(output_dir=str(tmp_path / "run")),
        TrainerState(),
        TrainerControl(),
    )
    callback.on_train_begin(args, state, control)
    for step in range(1, 5):
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": step / 10, "learning_rate": 0.1})
        callback.on_log(args, state, control, logs={"eval_loss": 1.0})  # not a training step
    callback.on_log(args, state, control, logs={"train_loss": 0.3, "train_runtime": 1.0})
    lines = (tmp_path / "run" / LOG_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 2, "loss": 0.2, "learning_rate": 0.1},
        {"step": 4, "loss": 0.4, "learning_rate": 0.1},
    ]


@needs_plugin
@pytest.mark.parametrize(
    ("options", "keys", "message"),
    [
        (
            {"field_questoin": "q"},
            {},
            "datasets[0].field_questoin: unknown key (did you mean 'field_question'?)",
        ),
        (
            {"prompt_template": "Q: "},
            {},
            "datasets[0].prompt_template: Value error, must contain '{question}' (got 'Q: ')",
        ),
        ({}, {"example": {"log_evry": 2}}, "example.log_evry: unknown key (did you mean 'log_every'?)"),
        ({}, {"example": {"log_every": 0}}, "example.log_every: Input should be greater than 0 (got 0)"),
    ],
    ids=["misspelled-option", "template-without-question", "misspelled-section-key", "log-every-0"],
)
def test_bad_plugin_settings_are_config_errors(tmp_path, capsys, options, keys, message):
    """Exit code 2 and one line: file, line of the key, key path, what is wrong."""
    cfg = write_config(tmp_path, tmp_path / "model", qa_pairs(**options), **BASE, **keys)
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    key = message.split(": ")[0].rpartition(".")[2]  # the last part of the key path the message names
    assert err == f"error: {cfg}:{line_of(cfg, key)}: {message}\n"
    assert "Traceback" not in err


@needs_plugin
def test_example_config_is_valid_and_its_data_exists():
    cfg, manager = load_config(PLUGIN_DIR / "example.yaml")
    assert manager.infos["example"].source == "entry point"
    assert cfg.section("example").log_every == 1
    (dataset,) = cfg.datasets
    assert (dataset.type, dataset.options.prompt_template) == ("qa_pairs", "Q: {question}\nA: ")
    assert (PLUGIN_DIR / dataset.path).is_file()
