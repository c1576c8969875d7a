"""The training-health advisor: settings rules, alerts from the logs, the diagnosis, the switches."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from rich.console import Console
from transformers import (
    AutoModelForCausalLM,
    Trainer,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from ftk.commands.train import training_arguments
from ftk.core.config.loader import load_config
from ftk.core.data.pipeline import PreparedData
from ftk.core.data.tokenize import SourceStats
from ftk.core.errors import FtkError
from ftk.core.plugins import create_plugin_manager
from ftk.plugins.advisor import (
    AdvisorCallback,
    count_parameters,
    find_callback,
    gather_facts,
    is_moe,
    optimizer_steps,
)
from ftk.plugins.advisor.rules import RULE_NAMES, RULES, RunFacts, evaluate
from tests.helpers import first_chat_rows, line_of, tiny_moe, write_config

REPO = Path(__file__).resolve().parents[1]

# The rules judge the settings a test gives: the configs leave write_config's run settings out.
BASE = dict.fromkeys(
    ["sequence_len", "micro_batch_size", "max_steps", "seed", "output_dir", "dataset_prepared_path"]
)

TINY, SEVEN_B = 10_000_000, 7_000_000_000


def config(tmp_path: Path, extra: str = ""):
    return load_config(write_config(tmp_path, "some/model", "data.jsonl", extra=extra, **BASE))[0]


def facts(cfg, **sizes) -> RunFacts:
    """Facts of a roomy, healthy run (10M params, 1,000 steps, 10,000 rows, one epoch), as overridden."""
    defaults = {"num_params": TINY, "moe": False, "num_steps": 1000, "train_rows": 10_000, "epochs": 1.0}
    return RunFacts.from_config(cfg, **{**defaults, **sizes})


def fired(cfg, **sizes) -> dict[str, str]:
    """Rule name -> printed text, for the before-training rules that fire."""
    return {finding.rule: finding.text for finding in evaluate("before", facts(cfg, **sizes))}


# --- before training ----------------------------------------------------------------------------


def test_rule_table_names_are_unique_and_cover_both_phases():
    assert len(set(RULE_NAMES)) == len(RULES)
    assert {rule.phase for rule in RULES} == {"before", "during", "end"}


def test_lora_learning_rate_too_low_warns_on_every_model_size(tmp_path):
    cfg = config(
        tmp_path, "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlearning_rate: 1.0e-6\nmicro_batch_size: 4\n"
    )
    assert fired(cfg) == {
        "lora_lr_low": "learning_rate 1e-6 is below the LoRA range 1e-5 to 1e-2 for models under 50M parameters: "
        "the adapter will barely move; raise learning_rate to about 2e-3"
    }
    assert fired(cfg, num_params=SEVEN_B) == {
        "lora_lr_low": "learning_rate 1e-6 is below the LoRA range 1e-5 to 5e-4: the adapter will barely move; "
        "raise learning_rate to about 2e-4"
    }


def test_quickstart_config_on_the_tiny_model_gets_no_warning():
    cfg, _ = load_config(REPO / "examples" / "quickstart.yaml")
    assert cfg.adapter == "lora" and cfg.learning_rate == 2e-3
    # 570 training rows (600 less 5% for eval), 100 steps of 4 rows: 0.7 epochs.
    assert fired(cfg, num_params=TINY, num_steps=100, train_rows=570, epochs=0.7, longest_example=400) == {}


def test_lora_learning_rate_too_high_only_on_a_real_sized_model(tmp_path):
    cfg = config(tmp_path, "adapter: lora\nlearning_rate: 2.0e-3\nmicro_batch_size: 4\n")
    assert fired(cfg, num_params=TINY) == {}
    assert fired(cfg, num_params=SEVEN_B) == {
        "lora_lr_high": "learning_rate 2e-3 is above the LoRA range 1e-5 to 5e-4 for a 7B-parameter model; "
        "lower learning_rate to about 2e-4"
    }


@pytest.mark.parametrize(
    ("learning_rate", "num_params", "expected"),
    [
        ("1.0e-4", 60_000_000, "full_lr_high"),
        ("1.0e-4", 40_000_000, None),  # under 50M parameters: exempt
        ("5.0e-5", SEVEN_B, None),  # the top of the range is still in it
        ("1.0e-5", SEVEN_B, None),
        ("5.0e-7", TINY, "full_lr_low"),
    ],
)
def test_full_fine_tuning_learning_rate_range(tmp_path, learning_rate, num_params, expected):
    cfg = config(tmp_path, f"learning_rate: {learning_rate}\nmicro_batch_size: 4\n")
    assert list(fired(cfg, num_params=num_params)) == ([expected] if expected else [])


def test_full_fine_tuning_warning_names_value_range_model_size_and_fix(tmp_path):
    cfg = config(tmp_path, "learning_rate: 1.0e-4\nmicro_batch_size: 4\n")
    assert fired(cfg, num_params=60_000_000)["full_lr_high"] == (
        "learning_rate 1e-4 is above the full fine-tuning range 1e-6 to 5e-5 for a 60M-parameter model; "
        "lower learning_rate to about 1e-5, or train a LoRA adapter (adapter: lora)"
    )


def test_moe_without_warmup_and_with_loose_clipping_gets_both_warnings(tmp_path):
    cfg = config(tmp_path, "adapter: lora\nmicro_batch_size: 4\n")  # no warmup, max_grad_norm 1.0
    assert fired(cfg, moe=True, num_steps=1000) == {
        "moe_warmup": "warmup is 0 of 1000 steps on an MoE model (recommended: at least 100, 10% of the "
        "steps, up to 100); set warmup_steps: 100 so the router settles gently",
        "moe_clipping": "max_grad_norm 1 on an MoE model (recommended: 0.5 or less); set max_grad_norm: 0.5",
    }
    assert fired(cfg, moe=False, num_steps=1000) == {}


def test_moe_warmup_threshold_is_ten_percent_of_short_runs(tmp_path):
    cfg = config(
        tmp_path, "micro_batch_size: 4\nmax_grad_norm: 0.5\nwarmup_ratio: 0.1\nlearning_rate: 1.0e-5\n"
    )
    assert fired(cfg, moe=True, num_steps=200) == {}  # ceil(200 x 0.1) = 20 = 10%
    short = config(
        tmp_path, "micro_batch_size: 4\nmax_grad_norm: 0.3\nwarmup_steps: 4\nlearning_rate: 1.0e-5\n"
    )
    assert list(fired(short, moe=True, num_steps=50)) == ["moe_warmup"]
    assert fired(short, moe=True, num_steps=50)["moe_warmup"].startswith(
        "warmup is 4 of 50 steps on an MoE model (recommended: at least 5,"
    )


def test_moe_with_clipping_off_says_so(tmp_path):
    cfg = config(
        tmp_path, "micro_batch_size: 4\nmax_grad_norm: 0\nwarmup_steps: 100\nlearning_rate: 1.0e-5\n"
    )
    assert fired(cfg, moe=True) == {
        "moe_clipping": "max_grad_norm 0 (no clipping) on an MoE model (recommended: 0.5 or less); "
        "set max_grad_norm: 0.5"
    }


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("lora_r: 16\nlora_alpha: 32\n", None),  # scale 2
        ("lora_r: 16\nlora_alpha: 64\n", None),  # scale 4, the edge of the range
        (
            "lora_r: 16\nlora_alpha: 128\n",
            "lora_alpha 128 with lora_r 16 gives a LoRA scale of 8 (alpha / r; recommended 0.5 to 4); "
            "set lora_alpha: 32 (a scale of 2)",
        ),
        (
            "lora_r: 16\nlora_alpha: 4\n",
            "lora_alpha 4 with lora_r 16 gives a LoRA scale of 0.25 (alpha / r; recommended 0.5 to 4); "
            "set lora_alpha: 32 (a scale of 2)",
        ),
        # rsLoRA scales by alpha / sqrt(r): alpha 16 at r 64 is a scale of 2, fine ...
        ("lora_r: 64\nlora_alpha: 16\npeft_use_rslora: true\n", None),
        # ... and alpha 128 at r 64 (2x r, fine without rsLoRA) is a scale of 16.
        ("lora_r: 64\nlora_alpha: 128\n", None),
        (
            "lora_r: 64\nlora_alpha: 128\npeft_use_rslora: true\n",
            "lora_alpha 128 with lora_r 64 gives a LoRA scale of 16 (rsLoRA: alpha / sqrt(r); recommended "
            "0.5 to 4); set lora_alpha: 16 (a scale of 2)",
        ),
    ],
)
def test_lora_alpha_to_rank_ratio(tmp_path, settings, expected):
    cfg = config(tmp_path, "adapter: lora\nmicro_batch_size: 4\n" + settings)
    assert fired(cfg) == ({"lora_alpha_ratio": expected} if expected else {})


def test_many_epochs_over_few_rows(tmp_path):
    cfg = config(tmp_path, "adapter: lora\nmicro_batch_size: 4\nnum_epochs: 5\n")
    assert fired(cfg, train_rows=200, epochs=5.0) == {
        "few_rows_many_epochs": "5 epochs over 200 training rows (more than 3 epochs on under 1,000 rows): the "
        "model will memorise them; lower num_epochs to 3 or less, or add data; set val_set_size to watch eval loss"
    }
    assert fired(cfg, train_rows=200, epochs=3.0) == {}
    assert fired(cfg, train_rows=5000, epochs=5.0) == {}


def test_small_effective_batch_counts_devices_and_packing(tmp_path):
    cfg = config(tmp_path, "adapter: lora\nmicro_batch_size: 1\ngradient_accumulation_steps: 2\n")
    assert fired(cfg) == {
        "small_batch": "effective batch size 2 (micro_batch_size × gradient_accumulation_steps × devices) is "
        "under 4: steps will be noisy; raise gradient_accumulation_steps to 8"
    }
    assert fired(cfg, world_size=2) == {}  # 1 x 2 x 2 devices = 4
    packed = config(tmp_path, "adapter: lora\nmicro_batch_size: 1\nsample_packing: true\n")
    assert fired(packed) == {}  # a packed row holds several examples


def test_sequence_len_far_above_the_longest_example(tmp_path):
    cfg = config(tmp_path, "adapter: lora\nmicro_batch_size: 4\nsequence_len: 4096\n")
    assert fired(cfg, longest_example=300) == {
        "oversized_sequence_len": "sequence_len 4096 is over 4× the longest training example (300 tokens) and "
        "sample_packing is off; set sample_packing: true to fill each row with several examples, or lower "
        "sequence_len to 512"
    }
    assert fired(cfg, longest_example=1500) == {}
    packed = config(
        tmp_path, "adapter: lora\nmicro_batch_size: 4\nsequence_len: 4096\nsample_packing: true\n"
    )
    assert fired(packed, longest_example=300) == {}


def test_many_rows_over_sequence_len(tmp_path):
    cfg = config(tmp_path, "adapter: lora\nmicro_batch_size: 4\nsequence_len: 512\n")
    assert fired(cfg, rows_read=1000, rows_over_length=80) == {
        "rows_over_length": "80 of 1,000 rows (8%) are longer than sequence_len 512 and were dropped (more than "
        "5%); raise sequence_len, or set excess_length_strategy: truncate"
    }
    assert fired(cfg, rows_read=1000, rows_over_length=50) == {}


# --- during training ----------------------------------------------------------------------------


def callback_for(tmp_path: Path, model=None, **arguments) -> tuple[AdvisorCallback, StringIO, TrainerState]:
    """An advisor callback printing to a string, started like Trainer starts it."""
    out = StringIO()
    callback = AdvisorCallback(console=Console(file=out, width=100))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **arguments)
    state = TrainerState()
    callback.on_train_begin(args, state, TrainerControl(), model=model)
    return callback, out, state


def feed(callback: AdvisorCallback, state: TrainerState, step: int, **logs: float) -> None:
    state.global_step = step
    callback.on_log(None, state, TrainerControl(), logs=logs)


def advisor_lines(out: StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if line.startswith("advisor: ")]


def test_one_grad_norm_spike_is_reported_once_at_its_step(tmp_path):
    callback, out, state = callback_for(tmp_path, learning_rate=2e-4, max_grad_norm=1.0)
    norms = [0.4, 0.5, 0.45, 0.5, 0.55, 0.5, 0.4, 0.5, 6.0, 0.5, 0.45, 0.5]
    for step, norm in enumerate(norms, start=1):
        feed(callback, state, step, loss=2.0 - step * 0.01, grad_norm=norm, learning_rate=2e-4)
    assert [(f.rule, f.step) for f in callback.findings] == [("grad_spike", 9)]
    assert advisor_lines(out) == [
        "advisor: step 9: grad_norm 6 is 12.0× the median 0.5 of the previous steps (a spike: over 5× and over "
        "1); lower learning_rate to 1e-4"
    ]


def test_spikes_are_printed_once_and_all_counted_in_the_summary(tmp_path):
    callback, out, state = callback_for(tmp_path, learning_rate=2e-4, max_grad_norm=0.0)
    for step in range(1, 31):
        feed(callback, state, step, loss=2.0, grad_norm=8.0 if step in (10, 20, 21) else 0.5)
    assert [f.step for f in callback.findings if f.rule == "grad_spike"] == [10, 20, 21]
    assert len(advisor_lines(out)) == 1 and "step 10:" in advisor_lines(out)[0]
    assert callback.diagnosis() == [
        (
            "advisor",
            "grad-norm spike at 3 steps (10, 20, 21): lower learning_rate to 1e-4 or set max_grad_norm: 1.0",
        )
    ]


def test_a_jump_below_the_absolute_floor_is_not_a_spike(tmp_path):
    callback, _, state = callback_for(tmp_path)
    for step in range(1, 21):
        feed(callback, state, step, loss=2.0 - step * 0.05, grad_norm=0.9 if step == 15 else 0.05)
    assert callback.findings == []


def test_flat_loss_over_the_first_100_steps_is_reported_at_step_100(tmp_path):
    callback, out, state = callback_for(tmp_path, learning_rate=1e-6)
    for step in range(1, 151):
        feed(callback, state, step, loss=2.0 + (0.01 if step % 2 else -0.01), grad_norm=0.3)
    assert [(f.rule, f.step) for f in callback.findings] == [("loss_not_falling", 100)]
    assert advisor_lines(out) == [
        "advisor: step 100: the loss did not fall over the first 100 steps (mean 2 in the first quarter, 2 in the "
        "last; expected at least 1% lower); raise learning_rate (now 1e-6) and check which tokens are trained "
        "(ftk preprocess --debug)"
    ]


def test_falling_loss_is_healthy_and_the_summary_says_by_how_much(tmp_path):
    callback, out, state = callback_for(tmp_path, logging_steps=10)
    for step in range(10, 201, 10):  # logged every 10 steps: 20 entries
        feed(callback, state, step, loss=3.0 - step / 200, grad_norm=0.3)
    assert callback.findings == [] and advisor_lines(out) == []
    # First five logged losses 2.95..2.75 (mean 2.85), last five 2.2..2.0 (mean 2.1).
    assert callback.diagnosis() == [("advisor", "healthy: loss fell 2.85 → 2.1, no spikes")]


def test_eval_loss_rising_while_train_loss_falls_is_overfitting(tmp_path):
    callback, out, state = callback_for(tmp_path)
    evals = {100: 1.5, 200: 1.4, 300: 1.5}
    for step in range(1, 301):
        feed(callback, state, step, loss=2.0 - step / 300, grad_norm=0.3)
        if step in evals:
            feed(callback, state, step, eval_loss=evals[step])
    assert [(f.rule, f.step) for f in callback.findings] == [("overfitting", 300)]
    # Train loss at a step: the mean of the last 10 logged values (steps 191-200, then 291-300).
    assert advisor_lines(out) == [
        "advisor: step 300: eval loss 1.5 is up from 1.4 at step 200 (over 2%) while train loss fell 1.348 → "
        "1.015: overfitting; stop near step 200 (load_best_model_at_end: true keeps that checkpoint), lower "
        "num_epochs or add data"
    ]


def test_eval_loss_rising_with_train_loss_rising_is_not_overfitting(tmp_path):
    callback, _, state = callback_for(tmp_path)
    for step in range(1, 201):
        feed(callback, state, step, loss=1.0 + step / 200, grad_norm=0.3)
        if step in (100, 200):
            feed(callback, state, step, eval_loss=1.5 if step == 100 else 1.8)
    # A rising train loss is its own alert; the eval loss rising with it is not overfitting.
    assert [(f.rule, f.step) for f in callback.findings] == [("loss_not_falling", 100)]


@pytest.mark.parametrize(
    ("max_grad_norm", "alerts"), [(1.0, ["moe_grad_norm"]), (0.0, ["moe_grad_norm"]), (0.5, [])]
)
def test_moe_grad_norm_above_half_alerts_unless_clipped_at_half(tmp_path, max_grad_norm, alerts):
    callback, out, state = callback_for(tmp_path, model=tiny_moe(), max_grad_norm=max_grad_norm)
    for step, norm in enumerate([0.3, 0.4, 0.7, 0.8], start=1):
        feed(callback, state, step, loss=2.0 - step * 0.1, grad_norm=norm)
    assert [f.rule for f in callback.findings] == alerts * 2  # steps 3 and 4, printed once
    assert len(advisor_lines(out)) == len(alerts)
    if alerts:
        clipping = "no clipping (max_grad_norm 0)" if max_grad_norm == 0 else "max_grad_norm 1"
        assert advisor_lines(out)[0] == (
            f"advisor: step 3: grad_norm 0.7 on an MoE model with {clipping} (recommended: clip at 0.5 or less); "
            "set max_grad_norm: 0.5 to keep router updates small"
        )


def test_moe_detection_reads_the_model_config(tiny_model_dir):
    assert is_moe(tiny_moe())
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not is_moe(dense)
    assert 5_000_000 < count_parameters(dense) < 50_000_000  # the tiny model counts as small


# --- steps, switches and the hooks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("batches", "accumulation", "epochs", "max_steps", "expected"),
    [
        (22, 4, 2.0, -1, (12, 6)),  # 22 batches make 6 steps an epoch (the last one partial)
        (22, 4, 0.5, -1, (3, 6)),
        (22, 4, 2.0, 5, (5, 6)),  # max_steps wins
        (3, 8, 1.0, -1, (1, 1)),
        (None, 1, 1.0, 40, (40, None)),
    ],
)
def test_optimizer_steps_counts_like_trainer(batches, accumulation, epochs, max_steps, expected):
    assert optimizer_steps(batches, accumulation, epochs, max_steps) == expected


def test_ignored_rules_stay_silent_and_unknown_names_are_config_errors(tmp_path):
    extra = "adapter: lora\nlearning_rate: 1.0e-6\nmicro_batch_size: 4\nadvisor:\n  ignore: [lora_lr_low]\n"
    cfg, manager = load_config(write_config(tmp_path, "some/model", "data.jsonl", extra=extra, **BASE))
    (callback,) = [cb for cb in manager.hooks.trainer_callbacks(cfg) if isinstance(cb, AdvisorCallback)]
    callback.console = Console(file=StringIO())
    assert callback.check_settings(facts(cfg)) == []
    path = write_config(tmp_path, "some/model", "data.jsonl", advisor={"ignore": ["lora_lr_lo"]}, **BASE)
    with pytest.raises(FtkError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"{path}:{line_of(path, 'ignore')}: advisor.ignore: Value error, unknown rule 'lora_lr_lo'; rules: "
    )


def test_blocking_the_plugin_removes_its_config_section(tmp_path, monkeypatch):
    monkeypatch.setenv("FTK_DISABLE_PLUGINS", "advisor")
    manager = create_plugin_manager()
    assert "advisor" not in manager.infos
    path = write_config(tmp_path, "some/model", "data.jsonl", advisor={"enabled": False}, **BASE)
    with pytest.raises(FtkError, match="advisor: unknown key"):
        load_config(path, manager=manager)


LENGTHS = [5, 9, 40, 12, 7, 30, 8, 8, 21, 3, 16, 11, 6, 9, 25, 14, 10, 4, 18, 13, 9, 22]  # 22 rows


def built_run(tmp_path: Path, model_dir: Path, extra: str = ""):
    """A LoRA run at learning rate 1e-6 as far as ``pre_train``: config, plugins, data, model, trainer.

    The data: 22 kept rows of LENGTHS tokens, 3 of 25 dropped as too long for sequence_len 4096.
    """
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"""\
base_model: {model_dir}
datasets:
  - path: data.jsonl
adapter: lora
learning_rate: 1.0e-6
sequence_len: 4096
micro_batch_size: 2
gradient_accumulation_steps: 4
num_epochs: 2
output_dir: {tmp_path / "out"}
"""
        + extra
    )
    cfg, manager = load_config(path)
    features = {name: [[1] * n for n in LENGTHS] for name in ("input_ids", "labels", "attention_mask")}
    train = Dataset.from_dict({**features, "length": LENGTHS})
    sources = [SourceStats(path="data.jsonl", rows=25, kept=22, too_long=3)]
    data = PreparedData(train, None, tmp_path, False, sources)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    callbacks = manager.hooks.trainer_callbacks(cfg)
    args = training_arguments(cfg, has_eval=False)
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=callbacks)
    return cfg, manager, trainer, model, data


def advisor_rows(manager, cfg, trainer) -> list[tuple[str, str]]:
    rows = manager.hooks.summary_rows(cfg, trainer)
    return [row for row in rows if row[0] == "advisor"]


def test_pre_train_judges_the_built_trainer_the_model_and_the_data(tmp_path, tiny_model_dir, capsys):
    cfg, manager, trainer, model, data = built_run(tmp_path, tiny_model_dir)
    found = gather_facts(cfg, trainer, model, data)
    # 22 rows in batches of 2: 11 batches, 3 optimizer steps an epoch (the last one partial), 2 epochs.
    expected_steps = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
    assert found.num_steps == expected_steps == 6
    assert (found.epochs, found.train_rows, found.longest_example) == (2.0, 22, 40)
    assert (found.rows_read, found.rows_over_length) == (25, 3)
    assert found.num_params == count_parameters(model) and found.small_model and not found.moe

    rng = torch.get_rng_state()
    manager.hooks.pre_train(cfg, trainer, model, data)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's data order and init are left alone
    advisor = find_callback(trainer)
    assert [f.rule for f in advisor.findings] == ["lora_lr_low", "oversized_sequence_len", "rows_over_length"]
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("advisor: ")]
    assert printed == [f"advisor: {finding.text}" for finding in advisor.findings]
    assert advisor_rows(manager, cfg, trainer) == [
        ("advisor", "LoRA learning rate too low: raise learning_rate to about 2e-3"),
        (
            "advisor",
            "sequence_len far above the data: set sample_packing: true to fill each row with several "
            "examples, or lower sequence_len to 64",
        ),
        (
            "advisor",
            "many rows over sequence_len: raise sequence_len, or set excess_length_strategy: truncate",
        ),
        ("advisor", "no training steps logged"),
    ]


def test_disabled_advisor_adds_no_callback_prints_nothing_and_adds_no_rows(tmp_path, tiny_model_dir, capsys):
    cfg, manager, trainer, model, data = built_run(tmp_path, tiny_model_dir, "advisor:\n  enabled: false\n")
    assert find_callback(trainer) is None
    manager.hooks.pre_train(cfg, trainer, model, data)
    assert "advisor" not in capsys.readouterr().err
    assert advisor_rows(manager, cfg, trainer) == []
    # The same run with the advisor on (the default) has the callback and its rows.
    cfg, manager, trainer, model, data = built_run(tmp_path, tiny_model_dir)
    manager.hooks.pre_train(cfg, trainer, model, data)
    assert find_callback(trainer) is not None and "advisor: " in capsys.readouterr().err
    assert len(advisor_rows(manager, cfg, trainer)) == 4


@pytest.mark.slow
def test_a_real_run_prints_the_warning_and_puts_the_diagnosis_in_the_summary(
    tmp_path, small_vocab_model_dir, capsys
):
    from ftk.commands.train import run_training

    data = first_chat_rows(tmp_path / "chat.jsonl", 24)
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"""\
base_model: {small_vocab_model_dir}
datasets:
  - path: {data}
adapter: lora
lora_r: 8
lora_alpha: 16
sequence_len: 384
micro_batch_size: 2
gradient_accumulation_steps: 2
max_steps: 2
learning_rate: 1.0e-6
output_dir: {tmp_path / "out"}
dataset_prepared_path: {tmp_path / "prepared"}
"""
    )
    cfg, manager = load_config(path)
    run_training(cfg, manager)
    err = capsys.readouterr().err
    assert (
        "advisor: learning_rate 1e-6 is below the LoRA range 1e-5 to 1e-2 for models under 50M parameters: the "
        "adapter will barely move; raise learning_rate to about 2e-3" in err
    )
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "LoRA learning rate too low: raise learning_rate to about 2e-3" in summary
    entries = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in entries if "loss" in entry]
    assert len(losses) == 2
    first, last = losses  # a two-step run: one value at each end
    if last < first:
        verdict = f"healthy: loss fell {first:.4g} → {last:.4g}, no spikes"
    elif last > first:
        verdict = f"loss ended above its first step: {last:.4g} (the last logged value) against {first:.4g} at step 1"
    else:
        verdict = f"no training alerts, but the loss did not fall: {first:.4g} → {last:.4g}"
    assert verdict in summary
