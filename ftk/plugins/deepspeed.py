"""Built-in plugin: DeepSpeed ZeRO through transformers' Trainer, the top-level ``deepspeed:`` key.

``deepspeed:`` is a preset (``zero1``, ``zero2``, ``zero3``, ``zero2_offload``, ``zero3_offload``,
``zero3_offload_params``) or the path of a DeepSpeed JSON file.  ``ftk validate`` checks it without
DeepSpeed installed; before a run the plugin checks the JSON against ftk's own keys, the machine
(DeepSpeed, a GPU) and ZeRO-3 against quantized loading, then hands the config to
``TrainingArguments(deepspeed=...)`` (``docs/scaling.md``).

An axolotl config names one of axolotl's own files (``deepspeed: deepspeed_configs/zero3_bf16.json``);
where that file is not there, the preset with the same ZeRO stage and offload replaces it, with a note.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import RootModel, field_validator
from pydantic_core import PydanticCustomError

from ftk.core.config.schema import FtkConfig, PathStr
from ftk.core.errors import FtkError, raise_problems, say
from ftk.core.hookspecs import hookimpl
from ftk.core.launch import one_process_note, world_size
from ftk.core.lifecycle import TRAINING
from ftk.integrations import deepspeed_configs
from ftk.integrations.deepspeed_configs import DeepSpeedConfigError

if TYPE_CHECKING:
    from transformers import Trainer

    from ftk.core.config.rewrite import ConfigRewrite
    from ftk.core.data.pipeline import PreparedData
    from ftk.core.registry import Register

SECTION = "deepspeed"
#: Config sections of the FSDP plugin: one run uses DeepSpeed or FSDP, not both.
FSDP_SECTIONS = ("fsdp", "fsdp_config")
INSTALL_HINT = "pip install 'ftk[deepspeed]'"
#: Optimizers that cannot step parameters held on the CPU.
GPU_ONLY_OPTIMIZERS = ("adamw_bnb_8bit",)
#: Top-level keys (of the quantization plugin) that quantize the base model with bitsandbytes on load.
QUANTIZED_LOAD_KEYS = ("load_in_4bit", "load_in_8bit")

Problem = tuple[tuple[str | int, ...], str]


class DeepSpeedSetting(RootModel[PathStr]):
    """Top-level ``deepspeed``: a ZeRO preset name or the path of a DeepSpeed JSON config."""

    @field_validator("root")
    @classmethod
    def _resolvable(cls, value: str) -> str:
        try:
            deepspeed_configs.load(value)
        except DeepSpeedConfigError as exc:
            raise PydanticCustomError("deepspeed_config", "{reason}", {"reason": str(exc)}) from None
        return value


# --- reading the config ------------------------------------------------------------------------


def deepspeed_config(cfg: FtkConfig) -> dict[str, Any] | None:
    """The DeepSpeed config dict ``cfg`` asks for (a fresh copy), or None without ``deepspeed:``."""
    setting = cfg.section(SECTION)
    return deepspeed_configs.load(setting.root) if setting is not None else None


def _source(cfg: FtkConfig) -> str:
    value = cfg.section(SECTION).root
    return f"preset {value}" if value in deepspeed_configs.PRESETS else value


def _differs(ds_value: Any, ftk_value: Any) -> bool:
    """Whether a value the user set in the JSON (not ``"auto"``) disagrees with ftk's."""
    return ds_value is not None and ds_value != "auto" and ds_value != ftk_value


@hookimpl
def config_problems(cfg: FtkConfig, processes: int | None = None) -> list[Problem]:
    """Problems between ``deepspeed:`` and the rest of the config, each as (key path, message).

    ``processes`` is the number of training processes, known when a run starts; with it the JSON's
    ``train_batch_size`` is checked too.
    """
    config = deepspeed_config(cfg)
    if config is None:
        return []
    problems: list[Problem] = []
    clash = next((name for name in FSDP_SECTIONS if cfg.section(name) is not None), None)
    if clash is not None:
        problems.append(((SECTION,), f"and {clash} are both set; a run uses DeepSpeed or FSDP, choose one"))
    source = _source(cfg)
    shared = [
        ("train_micro_batch_size_per_gpu", "micro_batch_size", cfg.micro_batch_size),
        ("gradient_accumulation_steps", "gradient_accumulation_steps", cfg.gradient_accumulation_steps),
        ("gradient_clipping", "max_grad_norm", cfg.max_grad_norm),
        ("bf16.enabled", "bf16", cfg.bf16),
        ("fp16.enabled", "fp16", cfg.fp16),
        ("optimizer.params.lr", "learning_rate", cfg.learning_rate),
        ("optimizer.params.weight_decay", "weight_decay", cfg.weight_decay),
        # The built-in optimizers plugin's keys (absent when it is disabled).
        ("optimizer.params.eps", "adam_epsilon", getattr(cfg, "adam_epsilon", None)),
        (
            "optimizer.params.betas",
            "[adam_beta1, adam_beta2]",
            [getattr(cfg, "adam_beta1", None), getattr(cfg, "adam_beta2", None)],
        ),
    ]
    for ds_key, ftk_key, ftk_value in shared:
        ds_value = deepspeed_configs.value_at(config, ds_key)
        if _differs(ds_value, ftk_value):
            problems.append(
                (
                    (SECTION,),
                    f"{source} sets {ds_key} to {ds_value!r} but {ftk_key} is {ftk_value!r}; "
                    f'set it to "auto" in the JSON (ftk fills it in) or make them equal',
                )
            )
    batch = cfg.micro_batch_size * cfg.gradient_accumulation_steps * (processes or 1)
    if processes is not None and _differs(config.get("train_batch_size"), batch):
        problems.append(
            (
                (SECTION,),
                f"{source} sets train_batch_size to {config['train_batch_size']!r} but micro_batch_size x "
                f"gradient_accumulation_steps x processes is {cfg.micro_batch_size} x "
                f'{cfg.gradient_accumulation_steps} x {processes} = {batch}; set it to "auto"',
            )
        )
    if (
        "optimizer" not in config
        and "optimizer" in deepspeed_configs.offloaded(config)
        and cfg.optimizer in GPU_ONLY_OPTIMIZERS
    ):
        problems.append(
            (
                ("optimizer",),
                f"{cfg.optimizer} cannot step the optimizer state that {source} offloads to the CPU; "
                "use adamw_torch (or a DeepSpeed optimizer block in the JSON)",
            )
        )
    if deepspeed_configs.zero_stage(config) == 3:
        for key in QUANTIZED_LOAD_KEYS:
            if _flag(cfg, key):
                problems.append(
                    (
                        (key,),
                        f"ZeRO-3 ({source}) cannot partition a model quantized on load: ftk loads the "
                        "model before DeepSpeed starts (no zero.Init); use zero2 or zero2_offload",
                    )
                )
    return problems


def _flag(cfg: FtkConfig, key: str) -> bool:
    """Whether another plugin's top-level boolean key is set and true (False when it is not loaded)."""
    return getattr(cfg, key, None) is True


# --- axolotl's bundled files ------------------------------------------------------------------


def _exists(value: str, config_dir: Path) -> bool:
    """Whether ``value`` names a file, read from the working directory or from ``config_dir``."""
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return path.is_file() or (not path.is_absolute() and (config_dir / path).is_file())


def axolotl_preset(value: str, bf16: Any) -> tuple[str, str]:
    """The preset that replaces ``deepspeed: value``, one of axolotl's files, and the note saying so.

    ``bf16`` is the config's ``bf16`` as written.  Raises ``DeepSpeedConfigError`` where no preset
    keeps the file's meaning.
    """
    name = Path(value).name
    if name in deepspeed_configs.AXOLOTL_UNMATCHED:
        nearest, what = deepspeed_configs.AXOLOTL_UNMATCHED[name]
        raise DeepSpeedConfigError(
            f"{value}: file not found; axolotl's {name} ({what}) has no ftk preset, since ftk does not "
            f"drive DeepSpeed's compile: use deepspeed: {nearest}, or the path of a copy of that file"
        )
    preset, what, needs_bf16 = deepspeed_configs.AXOLOTL_FILES[name]
    if needs_bf16 and bf16 not in (True, "auto"):
        shown = "not set" if bf16 is None else str(bf16).lower() if isinstance(bf16, bool) else repr(bf16)
        raise DeepSpeedConfigError(
            f"{value}: axolotl's {name} trains in bf16 but bf16 is {shown}; "
            f"set bf16: true (or auto), or use deepspeed: {preset} (precision from bf16/fp16)"
        )
    precision = ", precision from bf16" if needs_bf16 else ""
    return preset, f"{value} is not here: ftk's preset {preset} replaces axolotl's {name} ({what}{precision})"


@hookimpl
def rewrite_config(rewrite: ConfigRewrite) -> None:
    """``deepspeed:`` naming one of axolotl's bundled files that is not there: the equivalent preset."""
    value = rewrite.data.get(SECTION)
    if not isinstance(value, str) or Path(value).parent.name != "deepspeed_configs":
        return
    name = Path(value).name
    if name not in deepspeed_configs.AXOLOTL_FILES and name not in deepspeed_configs.AXOLOTL_UNMATCHED:
        return
    if _exists(value, rewrite.source.path.parent):
        return
    try:
        preset, note = axolotl_preset(value, rewrite.data.get("bf16"))
    except DeepSpeedConfigError as exc:
        rewrite.problem((SECTION,), str(exc))
        rewrite.drop((SECTION,))
        return
    rewrite.set((SECTION,), preset, note=note)


# --- starting a run ----------------------------------------------------------------------------


def deepspeed_installed() -> bool:
    """Whether the deepspeed package can be imported (the same test transformers makes)."""
    from transformers.integrations.deepspeed import is_deepspeed_available

    return is_deepspeed_available()


def runtime_problem(installed: bool, cuda_devices: int) -> str | None:
    """Why a DeepSpeed run cannot start on this machine, or None when it can."""
    if not installed:
        return f"{SECTION}: is set but DeepSpeed is not installed: {INSTALL_HINT}"
    if cuda_devices < 1:
        return f"{SECTION}: DeepSpeed trains on CUDA GPUs and none is visible; remove {SECTION} to train on the CPU"
    return None


# --- hooks -------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level ``deepspeed`` key."""
    register(SECTION, DeepSpeedSetting)


@hookimpl
def check_environment(cfg: FtkConfig, purpose: str) -> None:
    """Before any data work: DeepSpeed installed, a GPU, and the preset fits the process count."""
    if deepspeed_config(cfg) is None or purpose not in TRAINING:
        return
    import torch

    raise_problems(config_problems(cfg, processes=world_size()))
    problem = runtime_problem(deepspeed_installed(), torch.cuda.device_count())
    if problem is not None:
        raise FtkError(problem)


@hookimpl
def training_arguments(cfg: FtkConfig) -> dict[str, Any]:
    """``{"deepspeed": config}``; nothing without ``deepspeed:``."""
    config = deepspeed_config(cfg)
    return {} if config is None else {SECTION: config}


@hookimpl
def pre_train(cfg: FtkConfig, trainer: Trainer, model: Any, data: PreparedData) -> None:
    """Notes on the main process: a JSON optimizer or scheduler block replacing ftk's, a one-process run."""
    import torch

    config = deepspeed_config(cfg)
    if config is None or not trainer.args.should_save:
        return
    source = _source(cfg)
    for block, key in (("optimizer", "optimizer"), ("scheduler", "lr_scheduler")):
        if block in config:
            say(f"deepspeed: the {block} block of {source} replaces {key}: {getattr(cfg, key)}")
    note = one_process_note(
        SECTION, trainer.args.world_size, torch.cuda.device_count(), bool(deepspeed_configs.offloaded(config))
    )
    if note is not None:
        say(note)
