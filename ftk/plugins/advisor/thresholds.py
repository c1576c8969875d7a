"""The advisor's thresholds and learning-rate ranges, and how its messages write numbers.

Every number a rule compares with is a constant here (``docs/hyperparameters.md`` quotes them);
``ftk.plugins.advisor.rules`` re-exports them with the rule table.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- thresholds -------------------------------------------------------------------------------
# Learning rates, per method and model size (low, high).  The ranges from SMALL_MODEL_PARAMS on
# are calibrated on real models; smaller models (the bundled 10M-parameter test model trains
# LoRA at 2e-3) tolerate rates ten times higher, but not a learning rate of 1.
SMALL_MODEL_PARAMS = 50_000_000
LORA_LR = (1e-5, 5e-4)  # recommended LoRA learning rates
FULL_LR = (1e-6, 5e-5)  # recommended full fine-tuning learning rates
SMALL_LORA_LR = (1e-5, 1e-2)  # LoRA on models under SMALL_MODEL_PARAMS
SMALL_FULL_LR = (1e-6, 5e-4)  # full fine-tuning of models under SMALL_MODEL_PARAMS
FAR_OUTSIDE = 10.0  # a learning rate this many times the top of its range: the loss will diverge
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
# Strategies whose rows have no prompt, so that train_on_inputs changes nothing.
NO_PROMPT_STRATEGIES = ("completion", "input_output")
# A gradient-norm spike: above SPIKE_FACTOR × the median of the previous SPIKE_WINDOW logged norms
# (from SPIKE_MIN_HISTORY known norms on: step 3 when every step is logged) and above SPIKE_FLOOR,
# below which clipping at the default max_grad_norm of 1.0 keeps the update harmless anyway.
SPIKE_FACTOR, SPIKE_WINDOW, SPIKE_MIN_HISTORY, SPIKE_FLOOR = 5.0, 20, 2, 1.0
# Divergence: a logged loss DIVERGENCE_FACTOR times the first one and DIVERGENCE_MIN_RISE above it.
DIVERGENCE_FACTOR, DIVERGENCE_MIN_RISE = 2.0, 1.0
# No gradient: a grad norm of exactly 0 at ZERO_GRAD_STEPS logged steps in a row.
ZERO_GRAD_STEPS = 3
# Collapse: the loss within COLLAPSE_TOLERANCE (relative) of ln(vocabulary size), the loss of a
# uniform prediction, at COLLAPSE_STEPS logged steps in a row.
COLLAPSE_STEPS, COLLAPSE_TOLERANCE = 3, 0.01
# A loss that ended more than LOSS_ROSE (relative) above its first step went up rather than stayed flat.
LOSS_ROSE = 0.1
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
    """A learning rate as people write it: ``2e-4``, ``1.5e-5``, and ``1`` or ``0.5`` from 0.1 on."""
    if value >= 0.1:
        return f"{value:g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def loss_text(value: float) -> str:
    """A loss with 4 significant digits, ``6.0`` rather than ``6`` for whole values."""
    text = f"{value:.4g}"
    return text + ".0" if text.lstrip("-").isdigit() else text


def steps_text(steps: list[int]) -> str:
    """``19 steps (2–20)``; ``logged steps`` when the log skips steps in between."""
    consecutive = steps[-1] - steps[0] + 1 == len(steps)
    span = f"{steps[0]}–{steps[-1]}" if len(steps) > 1 else f"{steps[0]}"
    return f"{len(steps)} {'steps' if consecutive else 'logged steps'} ({span})"


# --- learning-rate ranges ---------------------------------------------------------------------


@dataclass(frozen=True)
class LrRange:
    """The recommended learning rates of one method at one model size, and where to start."""

    method: str  # "LoRA" or "full fine-tuning", as the messages name it
    low: float
    high: float
    start: float
    run: str  # the run it is for, as in "high for {run}": "LoRA on a" / "a full fine-tune of a"

    @property
    def text(self) -> str:
        """``1e-5 to 5e-4``."""
        return f"{lr_text(self.low)} to {lr_text(self.high)}"


#: (method, small model) -> (range, starting value).  Method: "lora" (adapter lora or qlora) or
#: "full" (no adapter); other adapters get no learning-rate rule.
LR_RANGES: dict[tuple[str, bool], tuple[tuple[float, float], float]] = {
    ("lora", False): (LORA_LR, 2e-4),
    ("lora", True): (SMALL_LORA_LR, 2e-3),
    ("full", False): (FULL_LR, 1e-5),
    ("full", True): (SMALL_FULL_LR, 1e-4),
}


def learning_rate_range(adapter: str | None, num_params: int) -> LrRange | None:
    """The range that applies to ``adapter`` (None: full fine-tuning) on a model of ``num_params``."""
    method = "lora" if adapter in ("lora", "qlora") else "full" if adapter is None else None
    if method is None:
        return None
    (low, high), start = LR_RANGES[(method, num_params < SMALL_MODEL_PARAMS)]
    if method == "lora":
        return LrRange("LoRA", low, high, start, "LoRA on a")
    return LrRange("full fine-tuning", low, high, start, "a full fine-tune of a")
