"""Built-in plugin: the optimizers and learning-rate schedules ftk ships, as registrations.

Optimizers: ``adamw_torch``, ``adamw_torch_fused``, ``adamw_bnb_8bit`` (CUDA), ``sgd``,
``adafactor``.  Schedules: ``cosine``, ``linear``, ``constant``, each after a linear warmup
whose first step already learns (step k of W runs at k/(W+1) of the peak, where transformers'
warmup spends its first step at 0); the formulas are in ``docs/training.md``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.errors import FtkError, say
from ftk.core.hookspecs import hookimpl
from ftk.core.lifecycle import TRAINING

if TYPE_CHECKING:
    import torch

    from ftk.core.registry import Register

SECTION = "optimizers"
SGD_MOMENTUM = 0.9


class OptimizerSettings(StrictModel):
    """Top-level keys of the built-in optimizers and schedules."""

    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0.0, description="AdamW epsilon.")
    min_lr_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="Cosine and linear schedules end at this share of learning_rate."
    )


def _note(message: str) -> None:
    say(f"note: {message}")


def _adam(cfg: FtkConfig) -> dict[str, Any]:
    settings = cfg.section(SECTION)
    return {
        "lr": cfg.learning_rate,
        "betas": (settings.adam_beta1, settings.adam_beta2),
        "eps": settings.adam_epsilon,
    }


# --- optimizers ---------------------------------------------------------------------------


def fused_adamw_problem(params: Iterable[torch.Tensor]) -> str | None:
    """Why torch's fused AdamW cannot update ``params`` (their device or dtype), or None when it can.

    torch checks only at the first step, so this runs one fused step on a one-element tensor of
    each (device, dtype) the parameters use.
    """
    import torch

    for device, dtype in sorted({(p.device, p.dtype) for p in params}, key=str):
        try:
            probe = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
            probe.grad = torch.zeros_like(probe)
            torch.optim.AdamW([probe], fused=True).step()
        except (RuntimeError, NotImplementedError) as exc:
            return f"{device.type} {dtype}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def _adamw(cfg: FtkConfig, groups: list[dict], fused: bool) -> torch.optim.Optimizer:
    import torch

    return torch.optim.AdamW(groups, **_adam(cfg), fused=fused or None)


def fused_adamw(cfg: FtkConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """torch's fused AdamW, or (with a note on stderr) the default AdamW where the device lacks it."""
    problem = fused_adamw_problem(p for group in groups for p in group["params"])
    if problem is None:
        return _adamw(cfg, groups, fused=True)
    _note(f"optimizer: fused AdamW is not available here ({problem}); using adamw_torch")
    return _adamw(cfg, groups, fused=False)


def import_optional(module: str, extra: str, key: str, purpose: str) -> ModuleType:
    """Import ``module``; when it is not installed, an FtkError naming ``key`` and the pip extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.split(".")[0]:
            raise  # a dependency of the module is missing: report it as itself
        raise FtkError(f"{key}: {purpose} needs {module.split('.')[0]}: pip install 'ftk[{extra}]'") from exc


def import_bnb_optim() -> ModuleType:
    """``bitsandbytes.optim``, after checking for a CUDA GPU (its 8-bit AdamW needs one)."""
    import torch

    if not torch.cuda.is_available():
        raise FtkError("optimizer: adamw_bnb_8bit needs a CUDA GPU and none is available; use adamw_torch")
    return import_optional("bitsandbytes.optim", "bnb", "optimizer", "adamw_bnb_8bit")


def bnb_adamw_8bit(cfg: FtkConfig, groups: list[dict], model: torch.nn.Module) -> torch.optim.Optimizer:
    """bitsandbytes' 8-bit AdamW (CUDA only); embedding matrices keep 32-bit optimizer state."""
    import torch

    bnb_optim = import_bnb_optim()
    optimizer = bnb_optim.AdamW8bit(groups, **_adam(cfg))
    # 8-bit state for embeddings is known to destabilise training (bitsandbytes' own advice).
    manager = bnb_optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})
    return optimizer


def sgd(cfg: FtkConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """torch SGD with momentum 0.9 (fixed); weight decay is added to the gradient, torch's way."""
    import torch

    return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=SGD_MOMENTUM)


def adafactor(cfg: FtkConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """transformers' Adafactor at the explicit ``learning_rate`` (no relative step, no parameter scaling)."""
    from transformers.optimization import Adafactor

    return Adafactor(
        groups, lr=cfg.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False
    )


#: ``optimizer:`` name -> build(cfg, parameter groups, model).
OPTIMIZERS: dict[str, Callable[[FtkConfig, list[dict], torch.nn.Module], torch.optim.Optimizer]] = {
    "adamw_torch": lambda cfg, groups, model: _adamw(cfg, groups, fused=False),
    "adamw_torch_fused": lambda cfg, groups, model: fused_adamw(cfg, groups),
    "adamw_bnb_8bit": bnb_adamw_8bit,
    "sgd": lambda cfg, groups, model: sgd(cfg, groups),
    "adafactor": lambda cfg, groups, model: adafactor(cfg, groups),
}


# --- schedules ----------------------------------------------------------------------------


def lr_multiplier(step: int, shape: str, warmup: int, total: int, floor: float) -> float:
    """The share of the peak learning rate that optimizer step ``step`` (counted from 0) runs at.

    Warmup: step ``s < W`` runs at ``(s + 1) / (W + 1)``, so no step is spent at 0 and step ``W`` is
    the first at the peak, where the decay over ``p = (s - W) / (T - W)`` begins (docs/training.md).
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if shape == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 1.0 - progress if shape == "linear" else (1.0 + math.cos(math.pi * progress)) / 2
    return floor + (1.0 - floor) * decay


def schedule(shape: str, warmup: int, total: int, floor: float) -> Callable[[int], float]:
    """``lr_multiplier`` as a one-argument function of the step, for ``LambdaLR``.

    A plain function on purpose: ``LambdaLR`` does not save it in checkpoints, so a resumed run
    rebuilds it from its config.
    """

    def multiplier(step: int) -> float:
        return lr_multiplier(step, shape, warmup, total, floor)

    return multiplier


def lambda_schedule(
    shape: str,
) -> Callable[[FtkConfig, torch.optim.Optimizer, int, int], torch.optim.lr_scheduler.LRScheduler]:
    """The registered build function of the schedule ``shape`` (a LambdaLR over :func:`lr_multiplier`)."""

    def build(
        cfg: FtkConfig, optimizer: torch.optim.Optimizer, num_training_steps: int, num_warmup_steps: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        import torch

        floor = cfg.section(SECTION).min_lr_ratio
        if shape == "constant" and floor > 0:
            _note("min_lr_ratio does not apply to lr_scheduler: constant; ignored")
        if num_warmup_steps >= num_training_steps > 0:
            _note(
                f"warmup ({num_warmup_steps} steps) is not shorter than the run ({num_training_steps} steps): "
                "the learning rate never reaches learning_rate"
            )
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, schedule(shape, num_warmup_steps, num_training_steps, floor)
        )

    return build


SCHEDULES = ("cosine", "linear", "constant")


# --- hooks --------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level ``adam_*`` and ``min_lr_ratio`` keys."""
    register(SECTION, OptimizerSettings, flat=True)


@hookimpl
def register_optimizers(register: Register) -> None:
    """Offer the built-in optimizers by name."""
    for name, build in OPTIMIZERS.items():
        register(name, build)


@hookimpl
def register_schedulers(register: Register) -> None:
    """Offer ``cosine``, ``linear`` and ``constant``."""
    for shape in SCHEDULES:
        register(shape, lambda_schedule(shape))


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Before any data work: an 8-bit AdamW needs a CUDA GPU and bitsandbytes."""
    if cfg.optimizer == "adamw_bnb_8bit" and purpose in TRAINING:
        import_bnb_optim()
