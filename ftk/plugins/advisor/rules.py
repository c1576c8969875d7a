"""The advisor's rules: what each rule looks at, its texts, and the table ``RULES``.

The advisor plugin (``ftk.plugins.advisor``) gathers the facts and runs the rules in three phases:
``before`` training (on :class:`RunFacts`), ``during`` it at every log entry and at the ``end``
(both on :class:`TrainingWatch`, the logged history of the whole run, earlier sessions of a
resumed run included).  It lists what fired in the end-of-run summary.  A rule is a name (what
``advisor: {ignore: [...]}`` takes), a phase, a condition and its texts.  The thresholds are in
``thresholds.py`` and re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .thresholds import (
    COLLAPSE_STEPS,
    COLLAPSE_TOLERANCE,
    DIVERGENCE_FACTOR,
    DIVERGENCE_MIN_RISE,
    FAR_OUTSIDE,
    FEW_ROWS,
    FULL_LR,
    HEALTH_WINDOW,
    LONG_SEQUENCE_LEN,
    LORA_LR,
    LORA_SCALE,
    LOSS_CHECK_STEP,
    LOSS_MIN_DROP,
    LOSS_ROSE,
    LR_RANGES,
    MANY_EPOCHS,
    MIN_EFFECTIVE_BATCH,
    MOE_MAX_GRAD_NORM,
    MOE_WARMUP_ENOUGH,
    MOE_WARMUP_SHARE,
    NO_PROMPT_STRATEGIES,
    OVER_LENGTH_SHARE,
    OVERFIT_RISE,
    OVERSIZED_FACTOR,
    SMALL_FULL_LR,
    SMALL_LORA_LR,
    SMALL_MODEL_PARAMS,
    SPIKE_FACTOR,
    SPIKE_FLOOR,
    SPIKE_MIN_HISTORY,
    SPIKE_WINDOW,
    TRAIN_SMOOTHING,
    ZERO_GRAD_STEPS,
    LrRange,
    learning_rate_range,
    loss_text,
    lr_text,
    steps_text,
)
from .watch import RunFacts, TrainingWatch

__all__ = [
    "COLLAPSE_STEPS",
    "COLLAPSE_TOLERANCE",
    "DIVERGENCE_FACTOR",
    "DIVERGENCE_MIN_RISE",
    "FAR_OUTSIDE",
    "FEW_ROWS",
    "FULL_LR",
    "HEALTH_WINDOW",
    "LONG_SEQUENCE_LEN",
    "LORA_LR",
    "LORA_SCALE",
    "LOSS_CHECK_STEP",
    "LOSS_MIN_DROP",
    "LOSS_ROSE",
    "LR_RANGES",
    "MANY_EPOCHS",
    "MIN_EFFECTIVE_BATCH",
    "MOE_MAX_GRAD_NORM",
    "MOE_WARMUP_ENOUGH",
    "MOE_WARMUP_SHARE",
    "NO_PROMPT_STRATEGIES",
    "OVERFIT_RISE",
    "OVERSIZED_FACTOR",
    "OVER_LENGTH_SHARE",
    "SMALL_FULL_LR",
    "SMALL_LORA_LR",
    "SMALL_MODEL_PARAMS",
    "SPIKE_FACTOR",
    "SPIKE_FLOOR",
    "SPIKE_MIN_HISTORY",
    "SPIKE_WINDOW",
    "TRAIN_SMOOTHING",
    "ZERO_GRAD_STEPS",
    "RULES",
    "RULE_NAMES",
    "RULES_BY_NAME",
    "Finding",
    "LrRange",
    "Phase",
    "Rule",
    "RunFacts",
    "TrainingWatch",
    "evaluate",
    "learning_rate_range",
    "likely_cause",
    "loss_text",
    "lr_text",
    "steps_text",
]

# --- causes -----------------------------------------------------------------------------------


def _lr_above_range(w: TrainingWatch) -> LrRange | None:
    """The run's learning-rate range when the learning rate is above it (facts needed), else None."""
    lr_range = w.facts.lr_range if w.facts is not None else None
    return lr_range if lr_range is not None and w.learning_rate > lr_range.high else None


def likely_cause(w: TrainingWatch) -> str:
    """Why a loss went up, most likely first, with the change to make.

    A learning rate above its range (method and model size, from ``w.facts``), else no clipping,
    else the learning rate for this model and data anyway.
    """
    lr = w.learning_rate
    lr_range = _lr_above_range(w)
    if w.facts is not None and lr_range is not None:
        return (
            f"likely cause: learning rate {lr_text(lr)} is high for {lr_range.run} "
            f"{w.facts.params_text}-parameter model (range {lr_range.text}); lower learning_rate to about "
            f"{lr_text(lr_range.start)}"
        )
    if w.max_grad_norm == 0:
        return (
            f"likely cause: no gradient clipping (max_grad_norm 0) at learning rate {lr_text(lr)}; "
            f"set max_grad_norm: 1.0 and lower learning_rate to {lr_text(lr / 2)}"
        )
    no_warmup = w.facts is not None and w.facts.warmup_steps == 0
    return (
        f"likely cause: learning rate {lr_text(lr)} is too high for this model and data"
        f"{' with no warmup' if no_warmup else ''}; lower learning_rate to {lr_text(lr / 4)}"
        + (" and set warmup_ratio: 0.05" if no_warmup else "")
    )


def _flat_loss_advice(w: TrainingWatch) -> str:
    return (
        f"raise learning_rate (now {lr_text(w.learning_rate)}) and check which tokens are trained "
        "(ftk preprocess --debug)"
    )


def _ended_high_advice(w: TrainingWatch) -> str:
    """A loss that went up: the likely cause; one that stayed flat: a rate too low or the wrong tokens."""
    trend, first = w.loss_trend(), w.first_loss
    rose = trend is not None and first is not None and trend[1] > first[1] * (1 + LOSS_ROSE)
    return likely_cause(w) if rose or _lr_above_range(w) else _flat_loss_advice(w)


def _lower_lr_text(w: TrainingWatch) -> str:
    """``lower learning_rate to about 2e-3`` (the range's start) when above the range, else to half."""
    above = _lr_above_range(w)
    if above is not None:
        return f"lower learning_rate to about {lr_text(above.start)}"
    return f"lower learning_rate to {lr_text(w.learning_rate / 2)}"


# --- the rules --------------------------------------------------------------------------------

Phase = Literal["before", "during", "end"]


@dataclass(frozen=True)
class Rule:
    """One check: ``condition`` and the texts take RunFacts (before) or TrainingWatch (during, end).

    The printed line is ``message; advice``.  In the summary a before rule shows ``label:
    advice``, an end rule its printed line, and a during rule ``label at step N (note): advice``
    (``note``, when given, is short evidence kept at that step), or ``verdict`` of the whole run's
    watch when the rule has one.
    """

    name: str
    phase: Phase
    label: str
    condition: Callable[[Any], bool]
    message: Callable[[Any], str]
    advice: Callable[[Any], str]
    note: Callable[[Any], str] | None = None
    verdict: Callable[[Any], str] | None = None


def _lora_alpha_for(facts: RunFacts, scale: float = 2.0) -> int:
    """The lora_alpha that gives ``scale`` at the configured rank (and rsLoRA setting)."""
    return max(1, round(scale * (math.sqrt(facts.lora_r) if facts.rslora else facts.lora_r)))


def _over_length_text(f: RunFacts) -> str:
    cut = "truncated" if f.excess_length_strategy == "truncate" else "dropped"
    return (
        f"{f.rows_over_length:,} of {f.rows_read:,} rows ({f.rows_over_length / f.rows_read:.0%}) "
        f"are longer than sequence_len {f.sequence_len} and were {cut} (more than {OVER_LENGTH_SHARE:.0%})"
    )


def _lr_low(method: str) -> Callable[[RunFacts], bool]:
    def condition(f: RunFacts) -> bool:
        r = f.lr_range
        return r is not None and r.method == method and f.learning_rate < r.low

    return condition


def _lr_high(method: str) -> Callable[[RunFacts], bool]:
    def condition(f: RunFacts) -> bool:
        r = f.lr_range
        return r is not None and r.method == method and f.learning_rate > r.high

    return condition


def _size_text(f: RunFacts) -> str:
    """`` for models under 50M parameters`` where the small-model range applies."""
    return f" for models under {SMALL_MODEL_PARAMS / 1e6:g}M parameters" if f.small_model else ""


def _lr_low_text(f: RunFacts) -> str:
    r = f.lr_range
    assert r is not None
    return f"learning_rate {lr_text(f.learning_rate)} is below the {r.method} range {r.text}{_size_text(f)}"


def _lr_high_text(f: RunFacts) -> str:
    r = f.lr_range
    assert r is not None
    text = (
        f"learning_rate {lr_text(f.learning_rate)} is above the {r.method} range {r.text} "
        f"for a {f.params_text}-parameter model"
    )
    if f.learning_rate >= FAR_OUTSIDE * r.high:
        text += f" ({f.learning_rate / r.high:.3g}× its top, far outside: the loss will likely diverge)"
    return text


def _roles_text(f: RunFacts) -> str:
    path, roles = f.trained_roles[0]
    others = [role for role in roles if role != "assistant"]
    what = " and ".join(f"{role} messages" for role in others)
    more = f" (and {len(f.trained_roles) - 1} more datasets)" if len(f.trained_roles) > 1 else ""
    return (
        f"roles_to_train: [{', '.join(roles)}] in dataset {path}{more} trains the {what}"
        + (" and not the assistant's" if "assistant" not in roles else " too")
        + ": the model learns to write that side of the conversation, which supervised fine-tuning "
        "usually does not intend"
    )


def _spike_text(w: TrainingWatch) -> str:
    return (
        f"step {w.step}: grad_norm {w.grad_norm:.3g} is {w.spike_ratio:.1f}× the median "
        f"{w.grad_median:.3g} of the previous steps (a spike: over {SPIKE_FACTOR:g}× and over {SPIKE_FLOOR:g})"
    )


def _divergence_text(w: TrainingWatch, step: int, loss: float) -> str:
    first_step, first = w.losses[0]
    return f"loss diverged: {loss_text(first)} → {loss_text(loss)} ({loss / first:.2g}×) from step {first_step} to {step}"


def _divergence_verdict(w: TrainingWatch) -> str:
    peak = w.peak_loss
    assert peak is not None
    return f"{_divergence_text(w, *peak)}; {likely_cause(w)}"


def _zero_grad_text(steps: list[int]) -> str:
    return f"grad norm is exactly 0 for {steps_text(steps)}: no gradient reaches the trained parameters"


def _zero_grad_advice(w: TrainingWatch) -> str:
    return (
        "check what is trained: the adapter's target modules (lora_target_modules or lora_target_linear), "
        "frozen layers, and the trained tokens (ftk preprocess --debug); a collapsed model's gradients "
        "vanish too"
    )


def _collapse_text(w: TrainingWatch, steps: list[int]) -> str:
    was = (
        "(it has not learned since step 1)"
        if w.first_loss is not None and w.at_uniform_loss(w.first_loss[1])
        else "(collapse)"
    )
    return (
        f"loss ≈ ln(vocab_size)={w.uniform_loss:.2f}: the model predicts a uniform distribution {was} "
        f"for {steps_text(steps)}"
    )


def _collapse_advice(w: TrainingWatch) -> str:
    cause = likely_cause(w) if w.facts is not None or w.max_grad_norm == 0 else ""
    restart = "restart from the base model, not from this run's checkpoints"
    return (
        f"{cause}; {restart}"
        if cause
        else f"lower learning_rate (now {lr_text(w.learning_rate)}) and {restart}"
    )


def _ended_above_text(w: TrainingWatch) -> str:
    trend, first = w.loss_trend(), w.first_loss
    assert trend is not None and first is not None
    how = (
        "the last logged value"
        if w.health_window == 1
        else f"mean of the last {w.health_window} logged values"
    )
    return (
        f"loss ended above its first step: {loss_text(trend[1])} ({how}) against {loss_text(first[1])} "
        f"at step {first[0]}"
    )


RULES: tuple[Rule, ...] = (
    # --- before training: f is RunFacts -------------------------------------------------------
    Rule(
        "lora_lr_low",
        "before",
        "LoRA learning rate too low",
        _lr_low("LoRA"),
        lambda f: f"{_lr_low_text(f)}: the adapter will barely move",
        lambda f: f"raise learning_rate to about {lr_text(f.lr_range.start)}",
    ),
    Rule(
        "lora_lr_high",
        "before",
        "LoRA learning rate too high",
        _lr_high("LoRA"),
        _lr_high_text,
        lambda f: f"lower learning_rate to about {lr_text(f.lr_range.start)}",
    ),
    Rule(
        "full_lr_low",
        "before",
        "full fine-tuning learning rate too low",
        _lr_low("full fine-tuning"),
        _lr_low_text,
        lambda f: f"raise learning_rate to about {lr_text(f.lr_range.start)}",
    ),
    Rule(
        "full_lr_high",
        "before",
        "full fine-tuning learning rate too high",
        _lr_high("full fine-tuning"),
        _lr_high_text,
        lambda f: (
            f"lower learning_rate to about {lr_text(f.lr_range.start)}, or train a LoRA adapter (adapter: lora)"
        ),
    ),
    Rule(
        "moe_warmup",
        "before",
        "MoE warmup too short",
        lambda f: f.moe and f.warmup_steps < f.moe_warmup_needed,
        lambda f: (
            f"warmup is {f.warmup_steps} of {f.num_steps} steps on an MoE model (recommended: at least "
            f"{f.moe_warmup_needed}, {MOE_WARMUP_SHARE:.0%} of the steps, up to {MOE_WARMUP_ENOUGH})"
        ),
        lambda f: f"set warmup_steps: {f.moe_warmup_needed} so the router settles gently",
    ),
    Rule(
        "moe_clipping",
        "before",
        "MoE gradient clipping too loose",
        lambda f: f.moe and (f.max_grad_norm == 0 or f.max_grad_norm > MOE_MAX_GRAD_NORM),
        lambda f: (
            f"max_grad_norm {f.max_grad_norm:g}{' (no clipping)' if f.max_grad_norm == 0 else ''} "
            f"on an MoE model (recommended: {MOE_MAX_GRAD_NORM} or less)"
        ),
        lambda f: f"set max_grad_norm: {MOE_MAX_GRAD_NORM}",
    ),
    Rule(
        "lora_alpha_ratio",
        "before",
        "LoRA scale out of range",
        lambda f: f.adapter in ("lora", "qlora") and not LORA_SCALE[0] <= f.lora_scale <= LORA_SCALE[1],
        lambda f: (
            f"lora_alpha {f.lora_alpha} with lora_r {f.lora_r} gives a LoRA scale of {f.lora_scale:.3g} "
            f"({'rsLoRA: alpha / sqrt(r)' if f.rslora else 'alpha / r'}; recommended "
            f"{LORA_SCALE[0]:g} to {LORA_SCALE[1]:g})"
        ),
        lambda f: f"set lora_alpha: {_lora_alpha_for(f)} (a scale of 2)",
    ),
    Rule(
        "few_rows_many_epochs",
        "before",
        "many epochs over a small dataset",
        lambda f: f.train_rows < FEW_ROWS and f.epochs > MANY_EPOCHS,
        lambda f: (
            f"{f.epochs:.3g} epochs over {f.train_rows:,} training rows (more than {MANY_EPOCHS:g} "
            f"epochs on under {FEW_ROWS:,} rows): the model will memorise them"
        ),
        lambda f: (
            f"lower num_epochs to {MANY_EPOCHS:g} or less, or add data"
            + ("" if f.has_eval else "; set val_set_size to watch eval loss")
        ),
    ),
    Rule(
        "small_batch",
        "before",
        "effective batch too small",
        lambda f: not f.sample_packing and f.effective_batch < MIN_EFFECTIVE_BATCH,
        lambda f: (
            f"effective batch size {f.effective_batch} (micro_batch_size × gradient_accumulation_steps "
            f"× devices) is under {MIN_EFFECTIVE_BATCH}: steps will be noisy"
        ),
        lambda f: (
            "raise gradient_accumulation_steps to "
            f"{math.ceil(2 * MIN_EFFECTIVE_BATCH / (f.micro_batch_size * f.world_size))}"
        ),
    ),
    Rule(
        "oversized_sequence_len",
        "before",
        "sequence_len far above the data",
        lambda f: (
            not f.sample_packing
            and f.longest_example is not None
            and f.sequence_len >= max(LONG_SEQUENCE_LEN, OVERSIZED_FACTOR * f.longest_example)
        ),
        lambda f: (
            f"sequence_len {f.sequence_len} is over {OVERSIZED_FACTOR}× the longest training example "
            f"({f.longest_example} tokens) and sample_packing is off"
        ),
        lambda f: (
            f"set sample_packing: true to fill each row with several examples, or lower sequence_len "
            f"to {2 ** math.ceil(math.log2(max(f.longest_example or 1, 1)))}"
        ),
    ),
    Rule(
        "rows_over_length",
        "before",
        "many rows over sequence_len",
        lambda f: f.rows_read > 0 and f.rows_over_length > OVER_LENGTH_SHARE * f.rows_read,
        _over_length_text,
        lambda f: (
            "raise sequence_len"
            + ("" if f.excess_length_strategy == "truncate" else ", or set excess_length_strategy: truncate")
        ),
    ),
    Rule(
        "train_on_inputs",
        "before",
        "prompts trained (train_on_inputs)",
        lambda f: f.train_on_inputs,
        lambda f: (
            "train_on_inputs: true trains the prompt tokens too (system and user turns, instructions), not "
            "only the responses: the model learns to write prompts as well, which supervised fine-tuning "
            "usually does not intend"
        ),
        lambda f: (
            "set train_on_inputs: false unless you mean it (ftk preprocess --debug shows what is trained)"
        ),
    ),
    Rule(
        "roles_to_train",
        "before",
        "roles other than assistant trained",
        lambda f: bool(f.trained_roles),
        _roles_text,
        lambda f: (
            "set roles_to_train: [assistant] (the default) unless you mean it "
            "(ftk preprocess --debug shows what is trained)"
        ),
    ),
    # --- during training: w is TrainingWatch, after each log entry ----------------------------
    Rule(
        "grad_spike",
        "during",
        "grad-norm spike",
        lambda w: w.grad_spike,
        _spike_text,
        lambda w: (
            _lower_lr_text(w)
            + (" or set max_grad_norm: 1.0" if w.max_grad_norm == 0 or w.max_grad_norm > 1 else "")
        ),
        note=lambda w: f"{w.spike_ratio:.1f}× the median",
    ),
    Rule(
        "loss_diverged",
        "during",
        "loss diverged",
        lambda w: w.diverging,
        lambda w: f"step {w.step}: {_divergence_text(w, w.step, w.losses[-1][1])}",
        likely_cause,
        verdict=_divergence_verdict,
    ),
    Rule(
        "grad_norm_zero",
        "during",
        "grad norm exactly 0",
        lambda w: len(w.zero_grad_streak) == ZERO_GRAD_STEPS,
        lambda w: f"step {w.step}: {_zero_grad_text(w.zero_grad_streak)}",
        _zero_grad_advice,
        verdict=lambda w: f"{_zero_grad_text(w.longest_zero_grad())}; {_zero_grad_advice(w)}",
    ),
    Rule(
        "loss_collapse",
        "during",
        "loss at ln(vocab_size)",
        lambda w: len(w.collapse_streak) == COLLAPSE_STEPS,
        lambda w: f"step {w.step}: {_collapse_text(w, w.collapse_streak)}",
        _collapse_advice,
        verdict=lambda w: f"{_collapse_text(w, w.longest_collapse())}; {_collapse_advice(w)}",
    ),
    Rule(
        "moe_grad_norm",
        "during",
        f"MoE grad norm above {MOE_MAX_GRAD_NORM}",
        lambda w: (
            w.moe
            and w.grad_norm is not None
            and w.grad_norm > MOE_MAX_GRAD_NORM
            and (w.max_grad_norm == 0 or w.max_grad_norm > MOE_MAX_GRAD_NORM)
        ),
        lambda w: (
            f"step {w.step}: grad_norm {w.grad_norm:.3g} on an MoE model with {w.clipping_text} "
            f"(recommended: clip at {MOE_MAX_GRAD_NORM} or less)"
        ),
        lambda w: f"set max_grad_norm: {MOE_MAX_GRAD_NORM} to keep router updates small",
    ),
    Rule(
        "loss_not_falling",
        "during",
        "loss not falling",
        lambda w: w.loss_not_falling,
        lambda w: (
            "step {}: the loss did not fall over the first {} steps (mean {:.4g} in the first quarter, "
            "{:.4g} in the last; expected at least {:.0%} lower)".format(
                w.step, LOSS_CHECK_STEP, *w.early_late_loss(LOSS_CHECK_STEP), LOSS_MIN_DROP
            )
        ),
        _flat_loss_advice,
    ),
    Rule(
        "overfitting",
        "during",
        "eval loss rising while train loss falls",
        lambda w: w.overfitting,
        lambda w: (
            f"step {w.step}: eval loss {w.eval_loss:.4g} is up from {w.best_eval[1]:.4g} at step "
            f"{w.best_eval[0]} (over {OVERFIT_RISE:.0%}) while train loss fell "
            f"{w.train_loss_at(w.best_eval[0]):.4g} → {w.train_loss_at(w.step):.4g}: overfitting"
        ),
        lambda w: (
            f"stop near step {w.best_eval[0]} (load_best_model_at_end: true keeps that checkpoint), "
            "lower num_epochs or add data"
        ),
    ),
    # --- at the end: w is TrainingWatch with the whole run's history --------------------------
    Rule(
        "loss_above_start",
        "end",
        "loss ended above its first step",
        lambda w: w.ended_above_start and not w.ever_diverged,  # a divergence is reported as such
        _ended_above_text,
        _ended_high_advice,
    ),
)

RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)
RULES_BY_NAME: dict[str, Rule] = {rule.name: rule for rule in RULES}


@dataclass(frozen=True)
class Finding:
    """One rule that fired: where (step, None before training), the texts and the rule's note."""

    rule: str
    step: int | None
    message: str
    advice: str
    note: str = ""

    @property
    def text(self) -> str:
        """The printed line (without the ``advisor:`` prefix)."""
        return f"{self.message}; {self.advice}"


def evaluate(phase: Phase, subject: Any, ignore: tuple[str, ...] = ()) -> list[Finding]:
    """Run the rules of ``phase`` on ``subject`` (RunFacts or TrainingWatch) and return what fired."""
    step = subject.step if phase != "before" else None
    return [
        Finding(
            rule.name,
            step,
            rule.message(subject),
            rule.advice(subject),
            rule.note(subject) if rule.note else "",
        )
        for rule in RULES
        if rule.phase == phase and rule.name not in ignore and rule.condition(subject)
    ]
