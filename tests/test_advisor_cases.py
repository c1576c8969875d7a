"""The advisor on recorded runs: each case the advisor once missed, fed its metric series.

Every series is a list of per-step entries as ``metrics.jsonl`` holds them (step, epoch, loss,
grad_norm, learning_rate, num_tokens); ``replay`` drives the advisor's callback through them the
way Trainer does (``check_settings`` at ``pre_train``, ``on_train_begin``, ``on_log`` per entry,
``on_train_end``) and returns what it printed and the summary's diagnosis.
"""

from __future__ import annotations

import json
import math
from io import StringIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console
from transformers import TrainerControl, TrainerState, TrainingArguments

from ftk.plugins.advisor import AdvisorCallback, earlier_history, output_size
from ftk.plugins.advisor.rules import RunFacts, evaluate
from ftk.plugins.run_report.summary import train_loss_trend
from tests.helpers import make_config, tiny_moe

TINY, SEVEN_B = 10_000_000, 7_000_000_000  # the bundled tiny model has about 10M parameters
QWEN_VOCAB = 151_680  # the tiny model's output size: ln(151,680) = 11.93


def recorded(losses: list[float], norms: list[float], lr: float, start: int = 1) -> list[dict]:
    """The training entries of metrics.jsonl from step ``start`` on (constant learning rate, 2,048
    tokens a step, 25 steps an epoch)."""
    return [
        {
            "step": step,
            "epoch": round(step / 25, 4),
            "loss": loss,
            "grad_norm": norm,
            "learning_rate": lr,
            "num_tokens": 2048 * step,
            "tokens_per_second": 950.0,
        }
        for step, (loss, norm) in enumerate(zip(losses, norms, strict=True), start=start)
    ]


def run_facts(**keys: Any) -> RunFacts:
    """The facts of a 20-step run of 1,000 rows on a model of ``num_params`` (default: the tiny model)."""
    sizes = {"num_params": keys.pop("num_params", TINY), "moe": False, "num_steps": 20, "train_rows": 1000}
    cfg = make_config(micro_batch_size=4, gradient_accumulation_steps=2, **keys)
    return RunFacts.from_config(cfg, epochs=1.0, **sizes)


def replay(
    tmp_path: Path,
    entries: list[dict],
    facts: RunFacts | None = None,
    resumed_at: int = 0,
    earlier: list[dict] = (),
    **arguments: Any,
) -> tuple[AdvisorCallback, list[str]]:
    """Run the advisor's callback over ``entries``, after ``earlier`` ones when resumed at a step."""
    out = StringIO()
    callback = AdvisorCallback(console=Console(file=out, width=400))
    if facts is not None:
        callback.check_settings(facts)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **arguments)
    state = TrainerState(global_step=resumed_at, log_history=list(earlier))
    model = SimpleNamespace(config=SimpleNamespace(vocab_size=QWEN_VOCAB))
    callback.on_train_begin(args, state, TrainerControl(), model=model)
    for entry in entries:
        state.global_step = entry["step"]
        logs = {key: value for key, value in entry.items() if key != "step"}
        state.log_history.append({**logs, "step": entry["step"]})
        callback.on_log(args, state, TrainerControl(), logs=logs)
    callback.on_train_end(args, state, TrainerControl())
    printed = [line.removeprefix("advisor: ") for line in out.getvalue().splitlines()]
    return callback, printed


def rows(callback: AdvisorCallback) -> list[str]:
    return [text for label, text in callback.diagnosis() if label == "advisor"]


# --- a LoRA run at learning rate 1.0 ---------------------------------------------------------------

# Recorded on the tiny model: the loss jumps at step 3 with a grad-norm spike, then settles above
# where it started.  The first five losses average 8.10, the last five 6.306: "the loss fell".
LORA_LR_1_LOSSES = [5.61, 5.34, 10.9, 9.95, 8.72, 8.10, 7.64, 7.31, 7.02, 6.85]
LORA_LR_1_LOSSES += [6.71, 6.60, 6.52, 6.45, 6.40, 6.36, 6.33, 6.30, 6.28, 6.26]
LORA_LR_1_NORMS = [1.21, 1.48, 41.7, 6.9, 4.1, 2.9, 2.2, 1.9, 1.7, 1.6]
LORA_LR_1_NORMS += [1.5, 1.45, 1.4, 1.38, 1.35, 1.33, 1.31, 1.3, 1.29, 1.28]


def lora_at_lr_1() -> RunFacts:
    return run_facts(adapter="lora", lora_r=8, lora_alpha=16, learning_rate=1.0)


def test_lora_at_learning_rate_1_is_flagged_before_training_on_the_tiny_model():
    assert [finding.text for finding in evaluate("before", lora_at_lr_1())] == [
        "learning_rate 1 is above the LoRA range 1e-5 to 1e-2 for a 10M-parameter model (100× its top, far "
        "outside: the loss will likely diverge); lower learning_rate to about 2e-3"
    ]


def test_lora_at_learning_rate_1_spike_at_step_3_and_loss_above_its_first_step(tmp_path):
    entries = recorded(LORA_LR_1_LOSSES, LORA_LR_1_NORMS, lr=1.0)
    callback, printed = replay(tmp_path, entries, lora_at_lr_1(), learning_rate=1.0)
    cause = (
        "likely cause: learning rate 1 is high for LoRA on a 10M-parameter model (range 1e-5 to 1e-2); "
        "lower learning_rate to about 2e-3"
    )
    assert printed[1:] == [
        "step 3: grad_norm 41.7 is 31.0× the median 1.34 of the previous steps (a spike: over 5× and over 1); "
        "lower learning_rate to about 2e-3",
        f"loss ended above its first step: 6.306 (mean of the last 5 logged values) against 5.61 at step 1; {cause}",
    ]
    assert rows(callback) == [
        "LoRA learning rate too high: lower learning_rate to about 2e-3",
        "grad-norm spike at step 3 (31.0× the median): lower learning_rate to about 2e-3",
        f"loss ended above its first step: 6.306 (mean of the last 5 logged values) against 5.61 at step 1; {cause}",
    ]
    assert not any("healthy" in row for row in rows(callback))


def test_a_spike_is_caught_from_the_third_logged_step(tmp_path):
    # Two norms before it are enough to call a 30-fold jump a spike.
    callback, printed = replay(
        tmp_path, recorded([2.0, 1.9, 1.85], [0.9, 1.1, 30.0], lr=2e-4), learning_rate=2e-4
    )
    assert [(f.rule, f.step) for f in callback.findings] == [("grad_spike", 3)]
    assert printed == [
        "step 3: grad_norm 30 is 30.0× the median 1 of the previous steps (a spike: over 5× and over 1); "
        "lower learning_rate to 1e-4"
    ]


# --- a full fine-tune whose loss went 6 -> 42 ----------------------------------------------------

FULL_DIVERGED_LOSSES = [6.02, 5.41, 6.85, 9.7, 14.2, 19.8, 25.1, 30.4, 34.9, 38.2]
FULL_DIVERGED_LOSSES += [40.1, 41.3, 41.9, 42.0, 41.8, 41.95, 42.0, 41.9, 42.05, 41.98]
FULL_DIVERGED_NORMS = [3.9, 4.4, 12.5, 18.0, 22.3, 25.0, 27.9, 30.1, 31.6, 32.0]
FULL_DIVERGED_NORMS += [31.2, 30.5, 29.8, 29.6, 29.9, 29.7, 29.5, 29.8, 29.6, 29.7]


def test_a_diverging_full_fine_tune_is_named_with_its_likely_cause(tmp_path):
    facts = run_facts(learning_rate=1e-3)
    entries = recorded(FULL_DIVERGED_LOSSES, FULL_DIVERGED_NORMS, lr=1e-3)
    callback, printed = replay(tmp_path, entries, facts, learning_rate=1e-3)
    cause = (
        "likely cause: learning rate 1e-3 is high for a full fine-tune of a 10M-parameter model "
        "(range 1e-6 to 5e-4); lower learning_rate to about 1e-4"
    )
    assert printed == [
        "learning_rate 1e-3 is above the full fine-tuning range 1e-6 to 5e-4 for a 10M-parameter model; lower "
        "learning_rate to about 1e-4, or train a LoRA adapter (adapter: lora)",
        f"step 5: loss diverged: 6.02 → 14.2 (2.4×) from step 1 to 5; {cause}",
    ]
    assert rows(callback) == [
        "full fine-tuning learning rate too high: lower learning_rate to about 1e-4, or train a LoRA adapter "
        "(adapter: lora)",
        f"loss diverged: 6.02 → 42.05 (7×) from step 1 to 19; {cause}",
    ]


def test_divergence_without_known_settings_still_names_a_cause(tmp_path):
    entries = recorded(FULL_DIVERGED_LOSSES, FULL_DIVERGED_NORMS, lr=1e-3)
    callback, _ = replay(tmp_path, entries, learning_rate=1e-3, max_grad_norm=0.0)
    assert rows(callback) == [
        "loss diverged: 6.02 → 42.05 (7×) from step 1 to 19; likely cause: no gradient clipping (max_grad_norm 0) "
        "at learning rate 1e-3; set max_grad_norm: 1.0 and lower learning_rate to 5e-4"
    ]


def test_a_small_rise_from_a_low_loss_is_not_a_divergence(tmp_path):
    # 0.4 -> 0.9 is more than twice the first loss, but under DIVERGENCE_MIN_RISE (1.0) above it.
    losses = [0.4, 0.35, 0.9, 0.5, 0.3, 0.28, 0.27, 0.26]
    callback, _ = replay(tmp_path, recorded(losses, [0.5] * len(losses), lr=2e-4))
    assert callback.findings == []


# --- a collapse to uniform predictions -----------------------------------------------------------

UNIFORM = math.log(QWEN_VOCAB)
COLLAPSE_LOSSES = [5.58] + [UNIFORM] * 19  # from step 2 on the model predicts every token alike
COLLAPSE_NORMS = [2.31] + [0.0] * 19


def test_a_collapse_names_the_uniform_loss_and_the_zero_grad_norm(tmp_path):
    facts = run_facts(learning_rate=5e-3)
    entries = recorded(COLLAPSE_LOSSES, COLLAPSE_NORMS, lr=5e-3)
    callback, printed = replay(tmp_path, entries, facts, learning_rate=5e-3)
    cause = (
        "likely cause: learning rate 5e-3 is high for a full fine-tune of a 10M-parameter model (range 1e-6 to "
        "5e-4); lower learning_rate to about 1e-4"
    )
    zero_advice = (
        "check what is trained: the adapter's target modules (lora_target_modules or lora_target_linear), frozen "
        "layers, and the trained tokens (ftk preprocess --debug); a collapsed model's gradients vanish too"
    )
    collapse_advice = f"{cause}; restart from the base model, not from this run's checkpoints"
    assert printed[1:] == [
        f"step 2: loss diverged: 5.58 → 11.93 (2.1×) from step 1 to 2; {cause}",
        f"step 4: grad norm is exactly 0 for 3 steps (2–4): no gradient reaches the trained parameters; {zero_advice}",
        "step 4: loss ≈ ln(vocab_size)=11.93: the model predicts a uniform distribution (collapse) for 3 steps "
        f"(2–4); {collapse_advice}",
    ]
    assert rows(callback)[1:] == [
        f"loss diverged: 5.58 → 11.93 (2.1×) from step 1 to 2; {cause}",
        f"grad norm is exactly 0 for 19 steps (2–20): no gradient reaches the trained parameters; {zero_advice}",
        "loss ≈ ln(vocab_size)=11.93: the model predicts a uniform distribution (collapse) for 19 steps (2–20); "
        f"{collapse_advice}",
    ]
    assert not any(row.startswith("no training alerts") for row in rows(callback))


def test_zero_grad_norms_logged_every_ten_steps_count_as_logged_steps(tmp_path):
    entries = [{"step": 10 * i, "loss": 2.0, "grad_norm": 0.0} for i in range(1, 6)]
    callback, _ = replay(tmp_path, entries)
    assert rows(callback)[0].startswith(
        "grad norm is exactly 0 for 5 logged steps (10–50): no gradient reaches the trained parameters"
    )


def test_a_model_that_starts_and_stays_uniform_is_named_without_calling_it_a_collapse(tmp_path):
    entries = recorded([UNIFORM + 0.02] * 6, [0.8] * 6, lr=2e-4)
    callback, _ = replay(tmp_path, entries)
    assert rows(callback)[0].startswith(
        "loss ≈ ln(vocab_size)=11.93: the model predicts a uniform distribution (it has not learned since step 1) "
        "for 6 steps (1–6)"
    )


def test_output_size_reads_the_head_of_the_model():
    assert output_size(tiny_moe()) == 64
    assert output_size(SimpleNamespace(config=SimpleNamespace(vocab_size=QWEN_VOCAB))) == QWEN_VOCAB
    assert output_size(SimpleNamespace()) is None


# --- what the config trains ------------------------------------------------------------------


def test_train_on_inputs_gets_a_comment_before_training():
    facts = run_facts(adapter="lora", learning_rate=2e-3, train_on_inputs=True)
    assert [finding.text for finding in evaluate("before", facts)] == [
        "train_on_inputs: true trains the prompt tokens too (system and user turns, instructions), not only the "
        "responses: the model learns to write prompts as well, which supervised fine-tuning usually does not "
        "intend; set train_on_inputs: false unless you mean it (ftk preprocess --debug shows what is trained)"
    ]


def test_train_on_inputs_is_not_mentioned_where_no_row_has_a_prompt():
    facts = run_facts(
        adapter="lora",
        learning_rate=2e-3,
        train_on_inputs=True,
        datasets=[{"path": "d.jsonl", "type": "completion"}],
    )
    assert evaluate("before", facts) == []


@pytest.mark.parametrize(
    ("roles", "what"),
    [
        (["user"], "trains the user messages and not the assistant's"),
        (["user", "assistant"], "trains the user messages too"),
        (["system", "assistant"], "trains the system messages too"),
    ],
)
def test_roles_to_train_beyond_assistant_gets_a_comment_before_training(roles, what):
    facts = run_facts(
        adapter="lora", learning_rate=2e-3, datasets=[{"path": "chats.jsonl", "roles_to_train": roles}]
    )
    assert [finding.text for finding in evaluate("before", facts)] == [
        f"roles_to_train: [{', '.join(roles)}] in dataset chats.jsonl {what}: the model learns to write that side "
        "of the conversation, which supervised fine-tuning usually does not intend; set roles_to_train: "
        "[assistant] (the default) unless you mean it (ftk preprocess --debug shows what is trained)"
    ]


def test_training_only_the_assistant_gets_no_comment():
    facts = run_facts(
        adapter="lora",
        learning_rate=2e-3,
        datasets=[{"path": "chats.jsonl", "roles_to_train": ["assistant"]}],
    )
    assert evaluate("before", facts) == []


@pytest.mark.parametrize(
    ("eval_keys", "advice"),
    [
        ({}, "lower num_epochs to 3 or less, or add data; set val_set_size to watch eval loss"),
        ({"val_set_size": 0.05}, "lower num_epochs to 3 or less, or add data"),
        ({"test_datasets": [{"path": "eval.jsonl"}]}, "lower num_epochs to 3 or less, or add data"),
    ],
)
def test_set_val_set_size_is_advised_only_without_an_eval_set(eval_keys, advice):
    cfg = make_config(adapter="lora", learning_rate=2e-3, micro_batch_size=4, num_epochs=5, **eval_keys)
    facts = RunFacts.from_config(cfg, num_params=TINY, moe=False, num_steps=250, train_rows=200, epochs=5.0)
    (finding,) = evaluate("before", facts)
    assert (finding.rule, finding.advice) == ("few_rows_many_epochs", advice)


# --- learning-rate ranges for every model size ------------------------------------------------


@pytest.mark.parametrize(
    ("adapter", "learning_rate", "num_params", "expected"),
    [
        ("lora", 2e-3, TINY, None),  # the quickstart
        ("lora", 1e-2, TINY, None),  # the top of the small-model LoRA range
        ("lora", 2e-2, TINY, "lora_lr_high"),
        ("lora", 1.0, TINY, "lora_lr_high"),
        ("lora", 2e-3, SEVEN_B, "lora_lr_high"),
        ("lora", 2e-4, SEVEN_B, None),
        (None, 1e-4, TINY, None),
        (None, 5e-4, TINY, None),  # the top of the small-model full range
        (None, 1e-3, TINY, "full_lr_high"),
        (None, 1.0, TINY, "full_lr_high"),
        (None, 1e-4, SEVEN_B, "full_lr_high"),
        (None, 1e-5, SEVEN_B, None),
        (None, 5e-7, TINY, "full_lr_low"),
    ],
)
def test_learning_rate_ranges_apply_to_every_model_size(adapter, learning_rate, num_params, expected):
    facts = run_facts(adapter=adapter, learning_rate=learning_rate, num_params=num_params)
    assert [finding.rule for finding in evaluate("before", facts)] == ([expected] if expected else [])


def test_a_learning_rate_far_above_its_range_says_so_on_a_real_model_too():
    (finding,) = evaluate("before", run_facts(learning_rate=1e-3, num_params=SEVEN_B))
    assert finding.message == (
        "learning_rate 1e-3 is above the full fine-tuning range 1e-6 to 5e-5 for a 7B-parameter model (20× its top, "
        "far outside: the loss will likely diverge)"
    )


# --- a resumed run: the whole history --------------------------------------------------------

# Session 1 (steps 1-10) brings the loss from 3.0 to 2.1; the resumed session 2 (steps 11-20)
# wobbles between 1.95 and 2.05, ending a little above where it resumed.
SESSION_1 = recorded([3.0, 2.85, 2.7, 2.6, 2.5, 2.4, 2.3, 2.2, 2.15, 2.1], [0.9] * 10, lr=2e-4)
SESSION_2 = recorded(
    [1.95, 1.97, 1.99, 2.0, 2.01, 2.02, 2.03, 2.04, 2.04, 2.05], [0.8] * 10, lr=2e-4, start=11
)


def write_metrics(output_dir: Path, entries: list[dict]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))


def test_after_a_resume_the_advisor_and_the_summary_agree_that_the_loss_fell(tmp_path):
    # metrics.jsonl as the interrupted session left it: steps 1-12, the run resumes from checkpoint-10.
    interrupted = recorded(
        [3.0, 2.85, 2.7, 2.6, 2.5, 2.4, 2.3, 2.2, 2.15, 2.1, 9.0, 9.0], [0.9] * 12, lr=2e-4
    )
    write_metrics(tmp_path, interrupted)
    callback, printed = replay(tmp_path, SESSION_2, resumed_at=10, earlier=SESSION_1)
    history = SESSION_1 + SESSION_2  # the trainer state's log_history, which the summary reads
    assert train_loss_trend(history) == "2.7300 → 2.0360 (mean of first/last 5 logged values)"
    assert rows(callback) == ["healthy: loss fell 2.73 → 2.036, no spikes"]
    assert printed == []


def test_after_a_resume_earlier_alerts_stay_in_the_summary_without_being_printed_again(tmp_path):
    spiky = recorded(
        [3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4, 2.3, 2.2, 2.1], [0.9, 1.0, 25.0] + [0.9] * 7, lr=2e-4
    )
    write_metrics(tmp_path, spiky)
    callback, printed = replay(tmp_path, SESSION_2, resumed_at=10, earlier=spiky, learning_rate=2e-4)
    assert printed == []
    assert rows(callback) == ["grad-norm spike at step 3 (26.3× the median): lower learning_rate to 1e-4"]


def test_earlier_history_falls_back_to_the_checkpoint_log_without_metrics_jsonl(tmp_path):
    state = TrainerState(global_step=10, log_history=SESSION_1 + [{"step": 10, "eval_loss": 2.2}])
    assert earlier_history(str(tmp_path), state) == SESSION_1 + [{"step": 10, "eval_loss": 2.2}]
    write_metrics(tmp_path, [*SESSION_1, "not an entry", {"step": 11, "loss": 9.0}])
    (tmp_path / "metrics.jsonl").write_text((tmp_path / "metrics.jsonl").read_text() + "{broken\n")
    assert earlier_history(str(tmp_path), state) == SESSION_1


@pytest.mark.parametrize(
    "losses",
    [[3.0, 2.0], [2.0, 3.0], [3.0, 2.5, 2.0], [2.0, 2.1, 1.9, 2.05], [5.0 - 0.1 * i for i in range(12)]],
)
def test_the_verdict_agrees_with_the_summary_row_about_whether_the_loss_fell(tmp_path, losses):
    entries = recorded(losses, [0.5] * len(losses), lr=2e-4)
    callback, _ = replay(tmp_path, entries)
    first, last = (float(value) for value in train_loss_trend(entries).split(" (")[0].split(" → "))
    verdict = rows(callback)[-1]
    assert verdict.startswith("healthy: loss fell") == (last < first)
