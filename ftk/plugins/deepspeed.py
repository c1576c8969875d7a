"""DeepSpeed ZeRO through transformers' Trainer: the top-level ``deepspeed:`` key.

``deepspeed:`` is a preset (``zero1``, ``zero2``, ``zero3``, ``zero2_offload``, ``zero3_offload``; see
``ftk.integrations.deepspeed_configs``) or the path of a DeepSpeed JSON file, read relative to the
current directory.  ``ftk validate`` checks it without DeepSpeed installed: a misspelt preset, a
missing or malformed file (with the JSON error's line), a file without ``zero_optimization`` and a
ZeRO-3 file that would save no weights are reported against the config line.

When a run starts, the plugin checks the keys the JSON shares with ftk's (a value that is not
``"auto"`` must equal ftk's, e.g. ``train_micro_batch_size_per_gpu`` and ``micro_batch_size``), that
``fsdp`` is not also set, that ZeRO-3 is not asked to partition a model quantized on load
(``load_in_4bit``/``load_in_8bit``: ftk loads the model before DeepSpeed starts, without
``zero.Init``), that an 8-bit bitsandbytes optimizer is not asked to step CPU-offloaded state, that DeepSpeed is installed (``pip install 'ftk[deepspeed]'``) and that a
CUDA GPU is visible, then hands the config to ``TrainingArguments(deepspeed=...)``.  A run started
without a launcher (plain ``ftk train`` on one GPU) gets the variables a launcher would set, for a
process group of one.

Saving: under ZeRO-3, transformers 5's ``Trainer.save_model`` gathers the partitioned weights (for a
peft model: the trainable ones, with ``_zero3_consolidated_16bit_state_dict``) on every rank and
rank 0 writes them with ``save_pretrained``, so ``adapter_model.safetensors`` holds real tensors.
An ``optimizer`` or ``scheduler`` block in a user's JSON replaces ftk's ``optimizer`` or
``lr_scheduler``; the plugin says so when the run starts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from pydantic import RootModel, field_validator
from pydantic_core import PydanticCustomError
from rich.console import Console

from ftk.core.config.schema import FtkConfig
from ftk.core.errors import FtkError
from ftk.core.hookspecs import hookimpl
from ftk.core.launch import world_size
from ftk.integrations import deepspeed_configs
from ftk.integrations.deepspeed_configs import DeepSpeedConfigError

if TYPE_CHECKING:
    from transformers import Trainer

    from ftk.core.data.pipeline import PreparedData
    from ftk.core.registry import SectionRegistrar

SECTION = "deepspeed"
#: Config sections of the FSDP plugin: one run uses DeepSpeed or FSDP, not both.
FSDP_SECTIONS = ("fsdp", "fsdp_config")
INSTALL_HINT = "pip install 'ftk[deepspeed]'"
#: Optimizers that cannot step parameters held on the CPU.
GPU_ONLY_OPTIMIZERS = ("adamw_bnb_8bit",)
#: Top-level keys (of the quantization plugin) that quantize the base model with bitsandbytes on load.
QUANTIZED_LOAD_KEYS = ("load_in_4bit", "load_in_8bit")
#: Variables a distributed launcher (torchrun, accelerate, deepspeed) sets for each process.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")

Problem = tuple[tuple[str | int, ...], str]


class DeepSpeedSetting(RootModel[str]):
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
        ("optimizer.params.eps", "adam_epsilon", cfg.adam_epsilon),
        ("optimizer.params.betas", "[adam_beta1, adam_beta2]", [cfg.adam_beta1, cfg.adam_beta2]),
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
        and deepspeed_configs.offloaded(config)
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
    """Whether a plugin's top-level boolean key (a ``RootModel[bool]`` section) is set and true."""
    setting = cfg.section(key)
    return getattr(setting, "root", setting) is True


def raise_problems(problems: list[Problem]) -> None:
    """Raise the problems as one ``FtkError``, a line each naming the key."""
    if problems:
        from ftk.core.config.loader import format_loc

        raise FtkError("\n".join(f"{format_loc(loc)}: {message}" for loc, message in problems))


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_process_group_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a launcher would set for a run of one process; empty when a launcher started this one.

    DeepSpeed (and accelerate's FSDP) need a process group even on one GPU; ``ftk train`` without
    ``--nproc-per-node`` starts no launcher.
    """
    if any(name in environ for name in LAUNCHER_VARIABLES):
        return {}
    return {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": environ.get("MASTER_ADDR") or "127.0.0.1",
        "MASTER_PORT": environ.get("MASTER_PORT") or str(_free_port()),
    }


def one_process_note(section: str, processes: int, gpus: int, offloaded: bool) -> str | None:
    """A note for a sharded run of one process: it can use more GPUs, or shards across nothing."""
    if processes != 1:
        return None
    if gpus > 1:
        return (
            f"{section}: one process on a machine with {gpus} GPUs; "
            f"train on all of them with ftk train CONFIG --nproc-per-node {gpus}"
        )
    if not offloaded:
        return f"{section}: one process, so there is nothing to shard across; only CPU offload saves GPU memory here"
    return None


def say(text: str) -> None:
    """Print a one-line note to stderr (no markup, no wrapping)."""
    Console(stderr=True, soft_wrap=True).print(text, markup=False, highlight=False)


# --- hooks -------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: SectionRegistrar) -> None:
    """Add the top-level ``deepspeed`` key."""
    register(SECTION, DeepSpeedSetting)


@hookimpl
def check_environment(cfg: FtkConfig) -> None:
    """Before any data work: DeepSpeed installed, a GPU, and the preset fits the process count."""
    if deepspeed_config(cfg) is None:
        return
    raise_problems(config_problems(cfg, processes=world_size()))
    problem = runtime_problem(deepspeed_installed(), torch.cuda.device_count())
    if problem is not None:
        raise FtkError(problem)


@hookimpl
def training_arguments(cfg: FtkConfig) -> dict[str, Any]:
    """``{"deepspeed": config}`` after the checks of :func:`check_environment`; nothing without ``deepspeed:``."""
    config = deepspeed_config(cfg)
    if config is None:
        return {}
    check_environment(cfg)
    os.environ.update(one_process_group_env(os.environ))
    return {SECTION: config}


@hookimpl
def pre_train(cfg: FtkConfig, trainer: Trainer, model: Any, data: PreparedData) -> None:
    """Notes on the main process: a JSON optimizer or scheduler block replacing ftk's, a one-process run."""
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
