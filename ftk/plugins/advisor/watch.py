"""What the advisor's rules look at: the run's settings and sizes (:class:`RunFacts`, before
training) and the logged history of the whole run (:class:`TrainingWatch`, during and after it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .thresholds import (
    COLLAPSE_TOLERANCE,
    DIVERGENCE_FACTOR,
    DIVERGENCE_MIN_RISE,
    HEALTH_WINDOW,
    LOSS_CHECK_STEP,
    LOSS_MIN_DROP,
    MOE_WARMUP_ENOUGH,
    MOE_WARMUP_SHARE,
    NO_PROMPT_STRATEGIES,
    OVERFIT_RISE,
    SMALL_MODEL_PARAMS,
    SPIKE_FACTOR,
    SPIKE_FLOOR,
    SPIKE_MIN_HISTORY,
    SPIKE_WINDOW,
    TRAIN_SMOOTHING,
    LrRange,
    learning_rate_range,
)

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig

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
    has_eval: bool = False  # val_set_size or test_datasets
    train_on_inputs: bool = False  # set, and some dataset has prompts for it to train
    #: (dataset path, its roles_to_train) for each dataset that trains a role other than assistant
    trained_roles: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_config(cls, cfg: FtkConfig, **sizes: Any) -> RunFacts:
        """Facts from ``cfg`` plus what only the run knows: ``num_params``, ``moe``, ``num_steps``,
        ``train_rows``, ``epochs`` (and optionally ``world_size``, ``longest_example``, ...)."""
        from ftk.core.trainer import warmup_steps

        world_size = sizes.pop("world_size", 1)
        lora = cfg.section("lora")  # the lora plugin's keys; the LoRA rules need adapter: lora or qlora
        defaults = {
            "has_eval": cfg.val_set_size > 0 or bool(cfg.test_datasets),
            "train_on_inputs": cfg.train_on_inputs
            and any(ds.type not in NO_PROMPT_STRATEGIES for ds in cfg.datasets),
            "trained_roles": _trained_roles(cfg),
        }
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
            **{**defaults, **sizes},
        )

    @property
    def small_model(self) -> bool:
        """Fewer parameters than SMALL_MODEL_PARAMS: the wider learning-rate ranges apply."""
        return self.num_params < SMALL_MODEL_PARAMS

    @property
    def lr_range(self) -> LrRange | None:
        """The learning-rate range of this run's method and model size (None for other adapters)."""
        return learning_rate_range(self.adapter, self.num_params)

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


def _trained_roles(cfg: FtkConfig) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(path, roles_to_train) of the training datasets whose roles_to_train go beyond assistant."""
    found = []
    for ds in cfg.datasets:
        roles = getattr(ds.options, "roles_to_train", None)
        if roles is None:
            roles = (ds.model_extra or {}).get("roles_to_train")
        if roles and any(role != "assistant" for role in roles):
            found.append((ds.path, tuple(roles)))
    return tuple(found)


def _number(value: Any) -> float | None:
    """A logged value as a float (metrics.jsonl writes NaN as ``"nan"``); None if it is none."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class TrainingWatch:
    """What the during-training and end rules see: the logged history up to the latest entry.

    ``facts`` (the before-training facts, when known) lets a rule name the likely cause;
    ``vocab_size`` (the model's output size) the loss of a uniform prediction.
    """

    learning_rate: float = 0.0
    max_grad_norm: float = 0.0
    moe: bool = False
    facts: RunFacts | None = None
    vocab_size: int | None = None
    step: int = 0
    latest: Literal["train", "eval", ""] = ""
    losses: list[tuple[int, float]] = field(default_factory=list)
    grad_norms: list[tuple[int, float]] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    previous_train_step: int = 0

    def record(self, step: int, logs: dict[str, Any]) -> bool:
        """Add one Trainer log entry; False when it holds nothing the rules look at."""
        if "eval_loss" in logs:
            eval_loss = _number(logs["eval_loss"])
            if eval_loss is None:
                return False
            self.step, self.latest = step, "eval"
            self.evals.append((step, eval_loss))
            return True
        loss = _number(logs.get("loss"))
        if loss is None:
            return False
        self.previous_train_step = self.losses[-1][0] if self.losses else 0
        self.step, self.latest = step, "train"
        self.losses.append((step, loss))
        norm = _number(logs.get("grad_norm"))
        if norm is not None:
            self.grad_norms.append((step, norm))
        return True

    # --- gradient norms ---

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

    @property
    def grad_spike(self) -> bool:
        """The latest norm is over SPIKE_FACTOR × the median before it, and over SPIKE_FLOOR."""
        norm, median = self.grad_norm, self.grad_median
        return (
            norm is not None
            and median is not None
            and median > 0
            and norm > max(SPIKE_FACTOR * median, SPIKE_FLOOR)
        )

    @property
    def spike_ratio(self) -> float:
        """The latest norm over the median before it (0.0 when either is unknown or the median is 0)."""
        norm, median = self.grad_norm, self.grad_median
        return norm / median if norm is not None and median else 0.0

    @property
    def zero_grad_streak(self) -> list[int]:
        """Steps of the trailing run of logged gradient norms that are exactly 0."""
        return _trailing(self.grad_norms, lambda norm: norm == 0.0) if self.grad_norm is not None else []

    def longest_zero_grad(self) -> list[int]:
        """Steps of the longest run of logged gradient norms that are exactly 0, over the whole run."""
        return _longest(self.grad_norms, lambda norm: norm == 0.0)

    # --- losses ---

    @property
    def first_loss(self) -> tuple[int, float] | None:
        """(step, loss) of the first logged training loss: the model before (nearly) any update."""
        return self.losses[0] if self.losses else None

    def diverged_at(self, loss: float) -> bool:
        """``loss`` is DIVERGENCE_FACTOR × the first loss and DIVERGENCE_MIN_RISE above it."""
        first = self.first_loss
        return (
            first is not None
            and first[1] > 0
            and loss >= DIVERGENCE_FACTOR * first[1]
            and loss - first[1] >= DIVERGENCE_MIN_RISE
        )

    @property
    def diverging(self) -> bool:
        """The latest loss is the first to diverge (so the rule fires once per run)."""
        if self.latest != "train" or not self.diverged_at(self.losses[-1][1]):
            return False
        return not any(self.diverged_at(loss) for _, loss in self.losses[:-1])

    @property
    def ever_diverged(self) -> bool:
        """Some logged loss diverged."""
        return any(self.diverged_at(loss) for _, loss in self.losses)

    @property
    def peak_loss(self) -> tuple[int, float] | None:
        """(step, loss) of the highest logged loss (NaN left out)."""
        known = [item for item in self.losses if not math.isnan(item[1])]
        return max(known, key=lambda item: item[1]) if known else None

    @property
    def uniform_loss(self) -> float | None:
        """ln(vocab_size): the loss of a model that predicts every token with the same probability."""
        return math.log(self.vocab_size) if self.vocab_size and self.vocab_size > 1 else None

    def at_uniform_loss(self, loss: float) -> bool:
        """``loss`` is within COLLAPSE_TOLERANCE of ln(vocab_size) (False when the size is unknown)."""
        uniform = self.uniform_loss
        return uniform is not None and abs(loss - uniform) <= COLLAPSE_TOLERANCE * uniform

    @property
    def collapse_streak(self) -> list[int]:
        """Steps of the trailing run of logged losses at ln(vocab_size)."""
        return _trailing(self.losses, self.at_uniform_loss) if self.latest == "train" else []

    def longest_collapse(self) -> list[int]:
        """Steps of the longest run of logged losses at ln(vocab_size), over the whole run."""
        return _longest(self.losses, self.at_uniform_loss)

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

    @property
    def health_window(self) -> int:
        """How many losses ``loss_trend`` averages at each end (the summary's train-loss window)."""
        return max(1, min(HEALTH_WINDOW, len(self.losses) // 2))  # the two ends never overlap

    def loss_trend(self) -> tuple[float, float] | None:
        """Mean of the first and of the last few logged losses, as the summary's train-loss row."""
        values = [loss for _, loss in self.losses]
        if not values:
            return None
        window = self.health_window
        return statistics.fmean(values[:window]), statistics.fmean(values[-window:])

    @property
    def ended_above_start(self) -> bool:
        """The mean of the last losses is above the first logged loss (two losses at least)."""
        trend, first = self.loss_trend(), self.first_loss
        return len(self.losses) >= 2 and trend is not None and first is not None and trend[1] > first[1]


def _trailing(series: list[tuple[int, float]], test: Callable[[float], bool]) -> list[int]:
    steps: list[int] = []
    for step, value in reversed(series):
        if not test(value):
            break
        steps.append(step)
    return steps[::-1]


def _longest(series: list[tuple[int, float]], test: Callable[[float], bool]) -> list[int]:
    best: list[int] = []
    run: list[int] = []
    for step, value in series:
        run = [*run, step] if test(value) else []
        if len(run) > len(best):
            best = run
    return best
