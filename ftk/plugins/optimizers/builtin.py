"""ftk's own optimizer builds: ``adamw_torch``, ``adamw_torch_fused``, ``adamw_bnb_8bit``, ``sgd``, ``adafactor``.

Each takes ftk's parameter groups (matrices decayed, biases and norms not) as they are.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError, say

if TYPE_CHECKING:
    import torch

SECTION = "optimizers"
SGD_MOMENTUM = 0.9


def note(message: str) -> None:
    """Print ``message`` as a note on stderr."""
    say(f"note: {message}")


def adam_kwargs(cfg: FtkConfig) -> dict[str, Any]:
    """``lr``, ``betas`` and ``eps`` of an Adam-style optimizer, from ``learning_rate`` and ``adam_*``."""
    settings = cfg.section(SECTION)
    return {
        "lr": cfg.learning_rate,
        "betas": (settings.adam_beta1, settings.adam_beta2),
        "eps": settings.adam_epsilon,
    }


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

    return torch.optim.AdamW(groups, **adam_kwargs(cfg), fused=fused or None)


def fused_adamw(cfg: FtkConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """torch's fused AdamW, or (with a note on stderr) the default AdamW where the device lacks it."""
    problem = fused_adamw_problem(p for group in groups for p in group["params"])
    if problem is None:
        return _adamw(cfg, groups, fused=True)
    note(f"optimizer: fused AdamW is not available here ({problem}); using adamw_torch")
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
    """``bitsandbytes.optim``, or an FtkError saying how to install it."""
    return import_optional("bitsandbytes.optim", "bnb", "optimizer", "adamw_bnb_8bit")


def bnb_adamw_8bit(cfg: FtkConfig, groups: list[dict], model: torch.nn.Module) -> torch.optim.Optimizer:
    """bitsandbytes' 8-bit AdamW; embedding matrices keep 32-bit optimizer state.

    Recent bitsandbytes (0.50 tried) runs it on the CPU too; the environment check tries one step.
    """
    bnb_optim = import_bnb_optim()
    optimizer = bnb_optim.AdamW8bit(groups, **adam_kwargs(cfg))
    keep_embeddings_32bit(model)
    return optimizer


def keep_embeddings_32bit(model: torch.nn.Module) -> None:
    """Give embedding matrices 32-bit bitsandbytes optimizer state (8-bit state destabilises them)."""
    import bitsandbytes
    import torch

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})


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
