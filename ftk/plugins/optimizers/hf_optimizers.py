"""Every other optimizer name of transformers' ``OptimizerNames``, built by transformers itself.

``Trainer.get_optimizer_cls_and_kwargs`` picks the class and its arguments from the
``TrainingArguments`` fields it reads (:class:`OptimizerArguments`), filled from the config's
``learning_rate``, ``adam_*``, ``weight_decay``, ``optim_args`` and ``optim_target_modules``; the
optimizer is then made over ftk's parameter groups, as ``Trainer.create_optimizer`` would.  What each name needs (a package, the keys of
``optim_args`` transformers reads) is in :data:`TRANSFORMERS_OPTIMIZERS`; the names axolotl builds
itself and transformers does not have are in :data:`AXOLOTL_ONLY`.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.plugins.optimizers.builtin import SECTION, keep_embeddings_32bit

if TYPE_CHECKING:
    import torch

BNB_INSTALL = "pip install 'ftk[bnb]'"


@dataclass(frozen=True)
class Needs:
    """What one transformers optimizer needs: a module (None: torch's own), how to install it, and more.

    ``optim_args``: the keys of ``optim_args`` transformers passes on for it (others would be
    dropped without a word, so they are errors).  ``probe``: the environment check runs one step
    of it on a small layer of the training device (low-rank and LOMO optimizers need the model).
    """

    module: str | None
    install: str = ""
    optim_args: tuple[str, ...] = ()
    probe: bool = True


_BNB = Needs("bitsandbytes", BNB_INSTALL)
_ADEMAMIX = Needs(
    "bitsandbytes", BNB_INSTALL, ("beta1", "beta2", "beta3", "alpha", "eps", "t_alpha", "t_beta3")
)
_GALORE = Needs(
    "galore_torch", "pip install galore-torch", ("rank", "update_proj_gap", "scale", "proj_type"), False
)
_APOLLO = Needs(
    "apollo_torch",
    "pip install apollo-torch",
    ("rank", "proj", "scale_type", "update_proj_gap", "scale", "proj_type"),
    False,
)
_LOMO = Needs("lomo_optim", "pip install lomo-optim", probe=False)
_SCHEDULE_FREE = Needs("schedulefree", "pip install schedulefree", ("weight_lr_power", "r"))

#: Every name of transformers' ``OptimizerNames`` that ftk does not build itself (test_optimizer_names.py
#: checks the two lists cover transformers' exactly).
TRANSFORMERS_OPTIMIZERS: dict[str, Needs] = {
    "adamw_torch_xla": Needs(
        "torch_xla", "pip install torch_xla (it runs on an XLA device: a TPU)", probe=False
    ),
    "adamw_torch_npu_fused": Needs(
        "torch_npu", "pip install torch_npu (it runs on an Ascend NPU)", probe=False
    ),
    "adamw_anyprecision": Needs(
        "torchdistx",
        "pip install torchdistx",
        ("use_kahan_summation", "momentum_dtype", "variance_dtype", "compensation_buffer_dtype"),
    ),
    # transformers hands block_size on as text, which torchao cannot use: not offered.
    "adamw_torch_4bit": Needs("torchao", "pip install 'ftk[torchao]'", ("bf16_stochastic_round",)),
    "adamw_torch_8bit": Needs("torchao", "pip install 'ftk[torchao]'", ("bf16_stochastic_round",)),
    "adagrad": Needs(None, optim_args=("lr_decay", "eps")),
    "rmsprop": Needs(None, optim_args=("momentum", "alpha", "eps", "centered")),
    "adamw_8bit": _BNB,
    "paged_adamw_32bit": _BNB,
    "paged_adamw_8bit": _BNB,
    "lion_8bit": _BNB,
    "lion_32bit": _BNB,
    "paged_lion_32bit": _BNB,
    "paged_lion_8bit": _BNB,
    # bitsandbytes' RMSprop gets optim_args as text from transformers: none offered.
    "rmsprop_bnb": _BNB,
    "rmsprop_bnb_8bit": _BNB,
    "rmsprop_bnb_32bit": _BNB,
    "ademamix": _ADEMAMIX,
    "ademamix_8bit": _ADEMAMIX,
    "paged_ademamix_32bit": _ADEMAMIX,
    "paged_ademamix_8bit": _ADEMAMIX,
    "galore_adamw": _GALORE,
    "galore_adamw_8bit": _GALORE,
    "galore_adafactor": _GALORE,
    "galore_adamw_layerwise": _GALORE,
    "galore_adamw_8bit_layerwise": _GALORE,
    "galore_adafactor_layerwise": _GALORE,
    "apollo_adamw": _APOLLO,
    "apollo_adamw_layerwise": _APOLLO,
    "lomo": _LOMO,
    "adalomo": _LOMO,
    "grokadamw": Needs(
        "grokadamw",
        "pip install grokadamw",
        ("alpha_init", "lamb", "gamma", "grokking_signal_decay_rate", "gradient_clipping"),
    ),
    "schedule_free_radam": _SCHEDULE_FREE,
    "schedule_free_adamw": _SCHEDULE_FREE,
    "schedule_free_sgd": _SCHEDULE_FREE,
    # transformers reads kahan_sum and decouple_lr with bool(text), true for "False": only max_lr offered.
    "stable_adamw": Needs("optimi", "pip install torch-optimi", ("max_lr",)),
}

LOW_RANK = tuple(name for name in TRANSFORMERS_OPTIMIZERS if name.startswith(("galore_", "apollo_")))
SCHEDULE_FREE = ("schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd")

#: axolotl's own optimizer names (transformers has none of them) -> what to use in ftk instead.
AXOLOTL_ONLY: dict[str, str] = {
    "optimi_adamw": "adamw_torch, or stable_adamw (torch-optimi's StableAdamW)",
    "ao_adamw_4bit": "adamw_torch_4bit (torchao's AdamW4bit by transformers' name)",
    "ao_adamw_8bit": "adamw_torch_8bit (torchao's AdamW8bit by transformers' name)",
    "ao_adamw_fp8": "adamw_torch_8bit or adamw_8bit",
    "adopt_adamw": "adamw_torch",
    "came_pytorch": "adafactor (factored second moments too)",
    "muon": "adamw_torch",
    "dion": "adamw_torch",
    "sinkgd": "adamw_torch",
    "flash_adamw": "adamw_torch_fused",
    "flash_adam": "adamw_torch_fused",
    "flash_sgd": "sgd",
    "flash_sgdw": "sgd",
    "flash_lion": "lion_32bit",
    "q_galore_adamw8bit": "galore_adamw_8bit",
}


def axolotl_only_message(name: str) -> str:
    """The error for an axolotl-only optimizer name."""
    return (
        f"{name} is an axolotl optimizer not in ftk (axolotl builds it itself; transformers has no "
        f"such name); use {AXOLOTL_ONLY[name]}"
    )


def unavailable(name: str) -> Any:
    """The registered build of an axolotl-only name: it stops with :func:`axolotl_only_message`."""

    def build(cfg: FtkConfig, groups: list[dict], model: Any) -> Any:
        raise FtkError(f"optimizer: {axolotl_only_message(name)}")

    return build


# --- optim_args -----------------------------------------------------------------------------


def parse_optim_args(value: str | dict[str, Any] | None) -> dict[str, str]:
    """``optim_args`` as transformers reads it: ``"key=value,key=value"`` (or axolotl's dict) -> text values.

    Raises ValueError on a malformed string.
    """
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(key): str(item) for key, item in value.items()}
    parsed = {}
    for pair in value.replace(" ", "").split(","):
        key, sep, item = pair.partition("=")
        if not sep or not key or "=" in item:
            raise ValueError(f"{pair!r} is not key=value (write key=value pairs separated by commas)")
        parsed[key] = item
    return parsed


def optim_args_text(value: str | dict[str, Any] | None) -> str | None:
    """``optim_args`` as the string ``TrainingArguments.optim_args`` takes (None when unset)."""
    parsed = parse_optim_args(value)
    return ",".join(f"{key}={item}" for key, item in parsed.items()) or None


def optim_args_problem(name: str, value: str | dict[str, Any] | None) -> str | None:
    """Why ``optim_args`` does not suit the optimizer ``name``, or None."""
    try:
        parsed = parse_optim_args(value)
    except ValueError as exc:
        return str(exc)
    if not parsed:
        return None
    if name not in TRANSFORMERS_OPTIMIZERS:
        return f"optimizer {name} takes no optim_args (it is built by ftk from learning_rate, adam_*, weight_decay)"
    accepted = TRANSFORMERS_OPTIMIZERS[name].optim_args
    unknown = sorted(set(parsed) - set(accepted))
    if not unknown:
        return None
    offered = ", ".join(accepted) if accepted else "none"
    return f"optimizer {name} does not read {', '.join(unknown)} (the keys it reads: {offered})"


# --- building -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerArguments:
    """The ``TrainingArguments`` fields transformers' optimizer builder reads, and nothing else.

    A real ``TrainingArguments`` cannot be made here: making one resets accelerate's state, and
    the optimizer is built in the middle of ``Trainer.train``.
    """

    optim: Any
    learning_rate: float
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    optim_args: str | None
    optim_target_modules: Any
    warmup_steps: int
    gradient_accumulation_steps: int
    parallel_mode: Any


def optimizer_arguments(name: str, cfg: FtkConfig) -> OptimizerArguments:
    """What transformers' optimizer builder reads from ``TrainingArguments``, from the config."""
    from transformers.training_args import OptimizerNames, ParallelMode

    settings = cfg.section(SECTION)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return OptimizerArguments(
        optim=OptimizerNames(name),
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_epsilon=settings.adam_epsilon,
        optim_args=optim_args_text(settings.optim_args),
        optim_target_modules=settings.optim_target_modules,
        warmup_steps=cfg.warmup_steps or 0,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        parallel_mode=ParallelMode.DISTRIBUTED if several else ParallelMode.NOT_PARALLEL,
    )


def build_with_transformers(
    name: str, cfg: FtkConfig, groups: list[dict], model: torch.nn.Module
) -> torch.optim.Optimizer:
    """The optimizer ``name`` as transformers makes it, over ftk's parameter ``groups``.

    Low-rank (GaLore, APOLLO) and LOMO optimizers get transformers' own parameters instead (the
    model's, split by ``optim_target_modules``), with ``weight_decay``.
    """
    import torch
    from transformers import Trainer

    require_package(name)
    try:
        args: Any = optimizer_arguments(name, cfg)
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, cast(Any, model))
    except (ImportError, ValueError, TypeError) as exc:
        raise FtkError(f"optimizer: {name}: {first_line(exc)}") from exc
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        return cls()(model, **kwargs)  # a factory (transformers' way for optimizers that split the model)
    params: Any = groups
    for key in ("params", "model", "optimizer_dict"):
        if key in kwargs:
            params = kwargs.pop(key)
            if key == "params":
                kwargs.setdefault("weight_decay", cfg.weight_decay)
    optimizer = cls(params, **kwargs)
    if "bitsandbytes" in cls.__module__ and kwargs.get("optim_bits") == 8:
        keep_embeddings_32bit(model)
    return optimizer


def transformers_build(name: str) -> Any:
    """The registered build function of the transformers optimizer ``name``."""

    def build(cfg: FtkConfig, groups: list[dict], model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_with_transformers(name, cfg, groups, model)

    return build


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the machine ----------------------------------------------------------------------------


def require_package(name: str) -> None:
    """An FtkError naming the pip package when the module the optimizer ``name`` needs is missing."""
    needs = TRANSFORMERS_OPTIMIZERS.get(name)
    if needs is None or needs.module is None:
        return
    if importlib.util.find_spec(needs.module) is None:
        raise FtkError(f"optimizer: {name} needs {needs.module}: {needs.install}")


def training_device() -> torch.device:
    """The device this process trains on: its CUDA or XPU device, else the CPU."""
    import torch

    index = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        return torch.device("cuda", index)
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return torch.device("xpu", index)
    return torch.device("cpu")


def step_problem(build: Any, cfg: FtkConfig, device: torch.device) -> str | None:
    """Why one step of the optimizer ``build(cfg, groups, model)`` makes fails on ``device``, or None.

    The step updates a 64x64 layer with gradients of ones.
    """
    import torch

    layer = torch.nn.Linear(64, 64, device=device)  # 4096 weights: bitsandbytes' 8-bit state starts there
    for param in layer.parameters():
        param.grad = torch.ones_like(param)
    before = layer.weight.detach().clone()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            groups = [{"params": list(layer.parameters()), "weight_decay": cfg.weight_decay}]
            build(cfg, groups, layer).step()
    except FtkError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the library raises is the answer
        return first_line(exc)
    if torch.equal(before, layer.weight):
        return "one step left the weights unchanged"
    return None


def machine_check(name: str, cfg: FtkConfig, build: Any = None) -> str | None:
    """Raise an FtkError when the optimizer ``name`` cannot train here; a note to print, or None.

    Checks the package, then runs one step on the training device, of ``build`` (default: the
    transformers optimizer ``name``).
    """
    needs = TRANSFORMERS_OPTIMIZERS.get(name, Needs(None))
    require_package(name)
    if not needs.probe:
        return None
    device = training_device()
    problem = step_problem(build or transformers_build(name), cfg, device)
    if problem is not None:
        raise FtkError(
            f"optimizer: {name} does not run on this machine ({device.type}: {problem}); use adamw_torch"
        )
    if name.startswith("paged_") and device.type == "cpu":
        return (
            f"optimizer: {name}: paging moves optimizer state out of GPU memory when it runs short; "
            "on the CPU the state already is in main memory, so it trains as the unpaged optimizer"
        )
    return None
