"""The built-in optimizers and learning-rate schedules, behind the ``create_optimizer`` and
``create_scheduler`` hooks.

Optimizers (``optimizer:``): ``adamw_torch``, ``adamw_torch_fused``, ``adamw_bnb_8bit``, ``sgd``,
``adafactor``.  Weight decay applies to matrices only, never to biases, norms or other 1-D
parameters.

Schedules (``lr_scheduler:``), as a multiplier of ``learning_rate`` at optimizer step ``s``
(``s = 0`` is the first step), with ``W`` warmup steps, ``T`` training steps and the floor
``r = min_lr_ratio``:

* warmup, every shape, ``s < W``:  ``s / W`` (the first step runs at 0, as in transformers);
* ``constant``, ``s >= W``:  ``1`` (``min_lr_ratio`` does not apply);
* ``linear``, ``s >= W``:  ``r + (1 - r) * (1 - p)``;
* ``cosine``, ``s >= W``:  ``r + (1 - r) * (1 + cos(pi * p)) / 2``;

where ``p = min(1, (s - W) / max(1, T - W))`` is the share of the decay done.  The multiplier
reaches ``r`` at ``s = T``, the value after the last step, as transformers' schedules reach 0.
``W`` is ``warmup_steps``, or ``ceil(T * warmup_ratio)``, or 0.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Iterable
from types import ModuleType

import torch
from transformers.optimization import Adafactor

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.hookspecs import hookimpl

SGD_MOMENTUM = 0.9


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# --- optimizers ---------------------------------------------------------------------------


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and not decayed (biases, norms, 1-D)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def fused_adamw_problem(params: Iterable[torch.Tensor]) -> str | None:
    """Why torch's fused AdamW cannot update ``params`` (their device or dtype), or None when it can.

    torch checks only at the first step, so this runs one fused step on a one-element tensor of
    each (device, dtype) the parameters use.
    """
    for device, dtype in sorted({(p.device, p.dtype) for p in params}, key=str):
        try:
            probe = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
            probe.grad = torch.zeros_like(probe)
            torch.optim.AdamW([probe], fused=True).step()
        except (RuntimeError, NotImplementedError) as exc:
            return f"{device.type} {dtype}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def _adamw(cfg: FtkConfig, groups: list[dict], fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        groups,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        fused=fused or None,
    )


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
    if not torch.cuda.is_available():
        raise FtkError("optimizer: adamw_bnb_8bit needs a CUDA GPU and none is available; use adamw_torch")
    return import_optional("bitsandbytes.optim", "bnb", "optimizer", "adamw_bnb_8bit")


def bnb_adamw_8bit(cfg: FtkConfig, groups: list[dict], model: torch.nn.Module) -> torch.optim.Optimizer:
    """bitsandbytes' 8-bit AdamW (CUDA only); embedding matrices keep 32-bit optimizer state."""
    bnb_optim = import_bnb_optim()
    optimizer = bnb_optim.AdamW8bit(
        groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon
    )
    # 8-bit state for embeddings is known to destabilise training (bitsandbytes' own advice).
    manager = bnb_optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})
    return optimizer


def sgd(cfg: FtkConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """torch SGD with momentum 0.9 (fixed); weight decay is added to the gradient, torch's way."""
    return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=SGD_MOMENTUM)


def adafactor(cfg: FtkConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """transformers' Adafactor at the explicit ``learning_rate`` (no relative step, no parameter scaling)."""
    return Adafactor(
        groups, lr=cfg.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False
    )


@hookimpl
def check_environment(cfg: FtkConfig) -> None:
    """Before any data work: an 8-bit AdamW needs a CUDA GPU and bitsandbytes."""
    if cfg.optimizer == "adamw_bnb_8bit":
        import_bnb_optim()


@hookimpl
def create_optimizer(cfg: FtkConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer ``cfg.optimizer`` names over the model's trainable parameters."""
    groups = parameter_groups(model, cfg.weight_decay)
    if not groups:
        raise FtkError("optimizer: the model has no trainable parameters")
    if cfg.optimizer == "adamw_torch":
        return _adamw(cfg, groups, fused=False)
    if cfg.optimizer == "adamw_torch_fused":
        return fused_adamw(cfg, groups)
    if cfg.optimizer == "adamw_bnb_8bit":
        return bnb_adamw_8bit(cfg, groups, model)
    if cfg.optimizer == "sgd":
        return sgd(cfg, groups)
    return adafactor(cfg, groups)


# --- schedules ----------------------------------------------------------------------------


def warmup_steps(cfg: FtkConfig, num_training_steps: int) -> int:
    """Warmup length in optimizer steps: ``warmup_steps``, or ``ceil(T * warmup_ratio)``, or 0.

    The product is rounded to 9 digits before the ceiling, so that 0.1 * 30 is 3 steps, not 4.
    """
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    if cfg.warmup_ratio is not None:
        return math.ceil(round(num_training_steps * cfg.warmup_ratio, 9))
    return 0


def lr_multiplier(step: int, shape: str, warmup: int, total: int, floor: float) -> float:
    """The share of the peak learning rate at optimizer step ``step`` (formulas in the module docstring)."""
    if step < warmup:
        return step / warmup
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


@hookimpl
def create_scheduler(
    cfg: FtkConfig, optimizer: torch.optim.Optimizer, num_training_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup, then cosine or linear decay to ``min_lr_ratio`` of the peak, or a constant rate."""
    warmup = warmup_steps(cfg, num_training_steps)
    if cfg.lr_scheduler == "constant" and cfg.min_lr_ratio > 0:
        _note("min_lr_ratio does not apply to lr_scheduler: constant; ignored")
    if warmup >= num_training_steps > 0:
        _note(
            f"warmup ({warmup} steps) is not shorter than the run ({num_training_steps} steps): "
            "the learning rate never reaches learning_rate"
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule(cfg.lr_scheduler, warmup, num_training_steps, cfg.min_lr_ratio)
    )
