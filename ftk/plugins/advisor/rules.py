"""The advisor's rules: every threshold, what each rule looks at, and the table ``RULES``.

The advisor plugin (``ftk.plugins.advisor``) gathers the facts, runs the rules before training
(``phase="before"``, on :class:`RunFacts`) and at every log entry (``phase="during"``, on
:class:`TrainingWatch`), and lists what fired in the end-of-run summary.  A rule is a name (what
``advisor: {ignore: [...]}`` takes), a phase, a condition and two texts.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ftk.core.trainer import warmup_steps

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig

# --- thresholds -------------------------------------------------------------------------------
# Learning rates are calibrated on real models; models under SMALL_MODEL_PARAMS parameters (the
# bundled 10M-parameter test model trains LoRA at 2e-3) are exempt from the "too high" rules.
SMALL_MODEL_PARAMS = 50_000_000
LORA_LR = (1e-5, 5e-4)  # recommended LoRA learning rates
FULL_LR = (1e-6, 5e-5)  # recommended full fine-tuning learning rates
# MoE routers are fragile early on and under large updates: warm up for at least 10% of the steps
# (100 steps suffice on long runs) and clip gradients at 0.5 or lower.
MOE_WARMUP_SHARE, MOE_WARMUP_ENOUGH = 0.10, 100
MOE_MAX_GRAD_NORM = 0.5
# LoRA scale = lora_alpha / lora_r (rsLoRA: lora_alpha / sqrt(lora_r)); 1 to 2 is usual.
LORA_SCALE = (0.5, 4.0)
FEW_ROWS, MANY_EPOCHS = 1_000, 3.0  # more epochs than this over fewer rows than this: memorising
MIN_EFFECTIVE_BATCH = 4  # unpacked examples per optimizer step, all devices (the advice aims at 2x)
LONG_SEQUENCE_LEN, OVERSIZED_FACTOR = 1024, 4  # sequence_len >= both that and 4x the longest example
OVER_LENGTH_SHARE = 0.05  # share of rows dropped or cut for exceeding sequence_len
# A gradient-norm spike: above SPIKE_FACTOR × the median of the previous SPIKE_WINDOW logged norms
# (once SPIKE_MIN_HISTORY are known) and above SPIKE_FLOOR, below which clipping at the default
# max_grad_norm of 1.0 keeps the update harmless anyway.
SPIKE_FACTOR, SPIKE_WINDOW, SPIKE_MIN_HISTORY, SPIKE_FLOOR = 5.0, 20, 5, 1.0
# Loss not falling: at the first log at or past step LOSS_CHECK_STEP, the mean loss of the last
# quarter of those steps is not at least LOSS_MIN_DROP (relative) below the first quarter's.
LOSS_CHECK_STEP, LOSS_MIN_DROP = 100, 0.01
# Overfitting: an eval loss OVERFIT_RISE (relative) above the best so far while the train loss
# (mean of the last TRAIN_SMOOTHING logged values) is lower than it was at the best eval.
OVERFIT_RISE, TRAIN_SMOOTHING = 0.02, 10
# The summary's "loss fell a → b" compares the means of the first and last HEALTH_WINDOW losses
# (fewer on short runs, so that the two ends never overlap; as the summary's train-loss row does).
HEALTH_WINDOW = 5


def lr_text(value: float) -> str:
    """A learning rate as people write it: ``2e-4``, ``1.5e-5``."""
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


# --- what the rules look at -------------------------------------------------------------------


@dataclass(frozen=True)
class RunFacts:
    """The settings and sizes the before-training rules judge (gathered by ``gather_facts``)."""

    adapter: str | None
    learning_rate: float
    num_params: int
    moe: bool
    num_steps: int
    warmup_steps: int
    max_grad_norm: float
    lora_r: int
    lora_alpha: int
    rslora: bool
    train_rows: int
    epochs: float
    micro_batch_size: int
    gradient_accumulation_steps: int
    world_size: int
    sample_packing: bool
    sequence_len: int
    longest_example: int | None = None
    rows_read: int = 0
    rows_over_length: int = 0
    excess_length_strategy: str = "drop"

    @classmethod
    def from_config(cls, cfg: FtkConfig, **sizes: Any) -> RunFacts:
        """Facts from ``cfg`` plus what only the run knows: ``num_params``, ``moe``, ``num_steps``,
        ``train_rows``, ``epochs`` (and optionally ``world_size``, ``longest_example``, ...)."""
        world_size = sizes.pop("world_size", 1)
        lora = cfg.section("lora")  # the lora plugin's keys; the LoRA rules need adapter: lora or qlora
        return cls(
            adapter=cfg.adapter,
            learning_rate=cfg.learning_rate,
            warmup_steps=warmup_steps(cfg, sizes["num_steps"]),
            max_grad_norm=cfg.max_grad_norm,
            lora_r=lora.lora_r if lora else 0,
            lora_alpha=lora.lora_alpha if lora else 0,
            rslora=bool(lora and lora.peft_use_rslora),
            micro_batch_size=cfg.micro_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            world_size=world_size,
            sample_packing=cfg.sample_packing,
            sequence_len=cfg.sequence_len,
            excess_length_strategy=cfg.excess_length_strategy,
            **sizes,
        )

    @property
    def small_model(self) -> bool:
        """Fewer parameters than the learning-rate ranges were calibrated for."""
        return self.num_params < SMALL_MODEL_PARAMS

    @property
    def lora_scale(self) -> float:
        """What LoRA multiplies the adapter's output by."""
        return self.lora_alpha / (math.sqrt(self.lora_r) if self.rslora else self.lora_r)

    @property
    def effective_batch(self) -> int:
        """Rows per optimizer step over all devices."""
        return self.micro_batch_size * self.gradient_accumulation_steps * self.world_size

    @property
    def moe_warmup_needed(self) -> int:
        """The warmup an MoE run should have: 10% of the steps, but 100 are enough."""
        return min(math.ceil(MOE_WARMUP_SHARE * self.num_steps), MOE_WARMUP_ENOUGH)

    @property
    def params_text(self) -> str:
        """The parameter count as ``7B`` or ``60M``."""
        return f"{self.num_params / 1e9:.3g}B" if self.num_params >= 1e9 else f"{self.num_params / 1e6:.3g}M"


@dataclass
class TrainingWatch:
    """What the during-training rules see: the logged history up to the latest entry."""

    learning_rate: float = 0.0
    max_grad_norm: float = 0.0
    moe: bool = False
    step: int = 0
    latest: Literal["train", "eval", ""] = ""
    losses: list[tuple[int, float]] = field(default_factory=list)
    grad_norms: list[tuple[int, float]] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    previous_train_step: int = 0

    def record(self, step: int, logs: dict[str, float]) -> bool:
        """Add one Trainer log entry; False when it holds nothing the rules look at."""
        if "eval_loss" in logs:
            self.step, self.latest = step, "eval"
            self.evals.append((step, float(logs["eval_loss"])))
            return True
        if "loss" not in logs:
            return False
        self.previous_train_step = self.losses[-1][0] if self.losses else 0
        self.step, self.latest = step, "train"
        self.losses.append((step, float(logs["loss"])))
        if logs.get("grad_norm") is not None:
            self.grad_norms.append((step, float(logs["grad_norm"])))
        return True

    @property
    def grad_norm(self) -> float | None:
        """The gradient norm of the latest entry (None for eval entries or when not logged)."""
        if self.latest == "train" and self.grad_norms and self.grad_norms[-1][0] == self.step:
            return self.grad_norms[-1][1]
        return None

    @property
    def grad_median(self) -> float | None:
        """Median of the gradient norms logged before the latest one (None while too few)."""
        before = [norm for _, norm in self.grad_norms[:-1][-SPIKE_WINDOW:]]
        return statistics.median(before) if len(before) >= SPIKE_MIN_HISTORY else None

    def reached(self, mark: int) -> bool:
        """Whether the latest entry is the first training log at or past step ``mark``."""
        return self.latest == "train" and self.previous_train_step < mark <= self.step

    def early_late_loss(self, last_step: int) -> tuple[float, float] | None:
        """Mean loss over the first and over the last quarter of steps 1..``last_step``."""
        quarter = last_step / 4
        early = [loss for step, loss in self.losses if step <= quarter]
        late = [loss for step, loss in self.losses if last_step - quarter < step <= last_step]
        if not early or not late:
            return None
        return statistics.fmean(early), statistics.fmean(late)

    @property
    def loss_not_falling(self) -> bool:
        """At step 100: the loss of the last quarter is not 1% below the loss of the first."""
        if not self.reached(LOSS_CHECK_STEP):
            return False
        means = self.early_late_loss(LOSS_CHECK_STEP)
        return means is not None and means[1] > means[0] * (1 - LOSS_MIN_DROP)

    def train_loss_at(self, step: int) -> float | None:
        """Mean of the last ``TRAIN_SMOOTHING`` train losses logged at or before ``step``."""
        recent = [loss for at, loss in self.losses if at <= step][-TRAIN_SMOOTHING:]
        return statistics.fmean(recent) if recent else None

    @property
    def eval_loss(self) -> float | None:
        """The eval loss of the latest entry (None for training entries)."""
        return self.evals[-1][1] if self.latest == "eval" else None

    @property
    def best_eval(self) -> tuple[int, float] | None:
        """(step, loss) of the lowest eval loss before the latest entry."""
        earlier = self.evals[:-1] if self.latest == "eval" else self.evals
        return min(earlier, key=lambda item: item[1]) if earlier else None

    @property
    def overfitting(self) -> bool:
        """Eval loss 2% above its best while the train loss kept falling."""
        best, now = self.best_eval, self.eval_loss
        if best is None or now is None or now <= best[1] * (1 + OVERFIT_RISE):
            return False
        train_then, train_now = self.train_loss_at(best[0]), self.train_loss_at(self.step)
        return train_then is not None and train_now is not None and train_now < train_then

    @property
    def clipping_text(self) -> str:
        """How gradients are clipped, in words."""
        return (
            "no clipping (max_grad_norm 0)"
            if self.max_grad_norm == 0
            else f"max_grad_norm {self.max_grad_norm:g}"
        )

    def loss_trend(self) -> tuple[float, float] | None:
        """Mean of the first and of the last few logged losses, for the summary."""
        values = [loss for _, loss in self.losses]
        if not values:
            return None
        window = max(1, min(HEALTH_WINDOW, len(values) // 2))  # the two ends never overlap
        return statistics.fmean(values[:window]), statistics.fmean(values[-window:])


# --- the rules --------------------------------------------------------------------------------

Phase = Literal["before", "during"]


@dataclass(frozen=True)
class Rule:
    """One check: ``condition`` and the texts take RunFacts (before) or TrainingWatch (during).

    The printed line is ``message; advice``; the summary shows ``label`` and ``advice``.
    """

    name: str
    phase: Phase
    label: str
    condition: Callable[[Any], bool]
    message: Callable[[Any], str]
    advice: Callable[[Any], str]


def _lora_alpha_for(facts: RunFacts, scale: float = 2.0) -> int:
    """The lora_alpha that gives ``scale`` at the configured rank (and rsLoRA setting)."""
    return max(1, round(scale * (math.sqrt(facts.lora_r) if facts.rslora else facts.lora_r)))


def _over_length_text(f: RunFacts) -> str:
    cut = "truncated" if f.excess_length_strategy == "truncate" else "dropped"
    return (
        f"{f.rows_over_length:,} of {f.rows_read:,} rows ({f.rows_over_length / f.rows_read:.0%}) "
        f"are longer than sequence_len {f.sequence_len} and were {cut} (more than {OVER_LENGTH_SHARE:.0%})"
    )


RULES: tuple[Rule, ...] = (
    # --- before training: f is RunFacts -------------------------------------------------------
    Rule(
        "lora_lr_low",
        "before",
        "LoRA learning rate too low",
        lambda f: f.adapter in ("lora", "qlora") and f.learning_rate < LORA_LR[0],
        lambda f: (
            f"learning_rate {lr_text(f.learning_rate)} is below the LoRA range "
            f"{lr_text(LORA_LR[0])} to {lr_text(LORA_LR[1])}: the adapter will barely move"
        ),
        lambda f: "raise learning_rate to about 2e-4",
    ),
    Rule(
        "lora_lr_high",
        "before",
        "LoRA learning rate too high",
        lambda f: f.adapter in ("lora", "qlora") and not f.small_model and f.learning_rate > LORA_LR[1],
        lambda f: (
            f"learning_rate {lr_text(f.learning_rate)} is above the LoRA range "
            f"{lr_text(LORA_LR[0])} to {lr_text(LORA_LR[1])} for a {f.params_text}-parameter model"
        ),
        lambda f: "lower learning_rate to about 2e-4",
    ),
    Rule(
        "full_lr_low",
        "before",
        "full fine-tuning learning rate too low",
        lambda f: f.adapter is None and f.learning_rate < FULL_LR[0],
        lambda f: (
            f"learning_rate {lr_text(f.learning_rate)} is below the full fine-tuning range "
            f"{lr_text(FULL_LR[0])} to {lr_text(FULL_LR[1])}"
        ),
        lambda f: "raise learning_rate to about 1e-5",
    ),
    Rule(
        "full_lr_high",
        "before",
        "full fine-tuning learning rate too high",
        lambda f: f.adapter is None and not f.small_model and f.learning_rate > FULL_LR[1],
        lambda f: (
            f"learning_rate {lr_text(f.learning_rate)} is above the full fine-tuning range "
            f"{lr_text(FULL_LR[0])} to {lr_text(FULL_LR[1])} for a {f.params_text}-parameter model"
        ),
        lambda f: "lower learning_rate to about 1e-5, or train a LoRA adapter (adapter: lora)",
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
            f"lower num_epochs to {MANY_EPOCHS:g} or less, or add data; set val_set_size to watch eval loss"
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
    # --- during training: w is TrainingWatch, after each log entry ----------------------------
    Rule(
        "grad_spike",
        "during",
        "grad-norm spike",
        lambda w: (
            w.grad_norm is not None
            and w.grad_median is not None
            and w.grad_norm > max(SPIKE_FACTOR * w.grad_median, SPIKE_FLOOR)
        ),
        lambda w: (
            f"step {w.step}: grad_norm {w.grad_norm:.3g} is {w.grad_norm / w.grad_median:.1f}× the median "
            f"{w.grad_median:.3g} of the previous steps (a spike: over {SPIKE_FACTOR:g}× and over {SPIKE_FLOOR:g})"
        ),
        lambda w: (
            f"lower learning_rate to {lr_text(w.learning_rate / 2)}"
            + (" or set max_grad_norm: 1.0" if w.max_grad_norm == 0 or w.max_grad_norm > 1 else "")
        ),
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
        lambda w: (
            f"raise learning_rate (now {lr_text(w.learning_rate)}) and check which tokens are trained "
            "(ftk preprocess --debug)"
        ),
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
)

RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)


@dataclass(frozen=True)
class Finding:
    """One rule that fired: where (step, None before training) and the texts."""

    rule: str
    step: int | None
    message: str
    advice: str

    @property
    def text(self) -> str:
        """The printed line (without the ``advisor:`` prefix)."""
        return f"{self.message}; {self.advice}"


def evaluate(phase: Phase, subject: Any, ignore: tuple[str, ...] = ()) -> list[Finding]:
    """Run the rules of ``phase`` on ``subject`` (RunFacts or TrainingWatch) and return what fired."""
    step = subject.step if phase == "during" else None
    return [
        Finding(rule.name, step, rule.message(subject), rule.advice(subject))
        for rule in RULES
        if rule.phase == phase and rule.name not in ignore and rule.condition(subject)
    ]
