"""What the registration hooks fill: every named thing a config or the command line can choose.

Each kind is a table from name to entry; a name registered twice is an error that names both
plugins, and a name a config asks for that nobody registered is an error with a did-you-mean.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ftk.core.errors import FtkError, suggest

if TYPE_CHECKING:
    import torch
    from transformers import TrainerCallback

    from ftk.core.config.schema import FtkConfig

Features = dict[str, list[int]]
#: What a strategy's row function returns: one example, or several (e.g. a document split in chunks).
RowFeatures = Features | list[Features]


@dataclass(frozen=True)
class Command:
    """A CLI subcommand: ``add_arguments(parser)`` declares its arguments, ``run(args)`` runs it."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    plugin: str = ""


@dataclass(frozen=True)
class Strategy:
    """A prompt strategy: ``build(dataset, tokenizer, cfg)`` returns a function from a row to features."""

    name: str
    build: Callable[..., Callable[[dict[str, Any]], RowFeatures]]
    options_model: type[BaseModel] | None = None
    plugin: str = ""


@dataclass(frozen=True)
class Section:
    """A plugin's config keys: under the key ``name`` or, when ``flat``, the model's fields at top level."""

    name: str
    model: type[BaseModel]
    flat: bool = False
    plugin: str = ""


@dataclass(frozen=True)
class Adapter:
    """``adapter: <name>``: ``apply(cfg, model, new_token_ids)`` returns the model to train."""

    name: str
    apply: Callable[[FtkConfig, Any, tuple[int, ...]], Any]
    plugin: str = ""


@dataclass(frozen=True)
class Optimizer:
    """``optimizer: <name>``: ``build(cfg, parameter_groups, model)`` returns a torch optimizer."""

    name: str
    build: Callable[[FtkConfig, list[dict[str, Any]], Any], torch.optim.Optimizer]
    plugin: str = ""


@dataclass(frozen=True)
class Scheduler:
    """``lr_scheduler: <name>``: ``build(cfg, optimizer, num_training_steps, num_warmup_steps)``."""

    name: str
    build: Callable[[FtkConfig, Any, int, int], torch.optim.lr_scheduler.LRScheduler]
    plugin: str = ""


@dataclass(frozen=True)
class Tracker:
    """``report_to: [<name>]``: ``callback(cfg)`` returns the TrainerCallback that sends the metrics.

    ``enabled_by(cfg)``, when given, turns the tracker on without ``report_to`` (axolotl's
    ``use_tensorboard`` or ``wandb_project``).
    """

    name: str
    callback: Callable[[FtkConfig], TrainerCallback]
    enabled_by: Callable[[FtkConfig], bool] | None = None
    plugin: str = ""


#: The ``register`` callback a registration hook receives: ``register(name, ...)`` with the
#: fields of that hook's entry type (above) after ``name``.
Register = Callable[..., None]


#: Registration hook -> (the Registry table it fills, the entry type, what one entry is called).
REGISTRATION_HOOKS: dict[str, tuple[str, type, str]] = {
    "register_config_sections": ("sections", Section, "config section"),
    "register_prompt_strategies": ("strategies", Strategy, "prompt strategy"),
    "register_commands": ("commands", Command, "command"),
    "register_adapters": ("adapters", Adapter, "adapter"),
    "register_optimizers": ("optimizers", Optimizer, "optimizer"),
    "register_schedulers": ("schedulers", Scheduler, "lr_scheduler"),
    "register_trackers": ("trackers", Tracker, "tracker"),
}


@dataclass
class Registry:
    """Everything the registration hooks added, a table per kind, keyed by name."""

    commands: dict[str, Command] = field(default_factory=dict)
    sections: dict[str, Section] = field(default_factory=dict)
    strategies: dict[str, Strategy] = field(default_factory=dict)
    adapters: dict[str, Adapter] = field(default_factory=dict)
    optimizers: dict[str, Optimizer] = field(default_factory=dict)
    schedulers: dict[str, Scheduler] = field(default_factory=dict)
    trackers: dict[str, Tracker] = field(default_factory=dict)

    def registrar(self, hook_name: str, plugin: str) -> Callable[..., None]:
        """The ``register`` callback handed to the registration hook ``hook_name`` of ``plugin``."""
        table_name, entry_type, kind = REGISTRATION_HOOKS[hook_name]
        table: dict[str, Any] = getattr(self, table_name)

        def register(name: str, *args: Any, **kwargs: Any) -> None:
            if name in table:
                raise FtkError(
                    f"plugin {plugin!r}: {kind} {name!r} is already registered by plugin {table[name].plugin!r}"
                )
            table[name] = entry_type(name, *args, plugin=plugin, **kwargs)

        return register

    def lookup(self, table_name: str, name: str) -> Any:
        """The entry ``name`` of a table; an FtkError with a did-you-mean and the choices otherwise."""
        table: dict[str, Any] = getattr(self, table_name)
        if name in table:
            return table[name]
        kind = next(kind for table, _, kind in REGISTRATION_HOOKS.values() if table == table_name)
        choices = ", ".join(sorted(table)) or "none (no plugin registers one)"
        raise FtkError(f"unknown {kind} {name!r}{suggest(name, list(table))}; registered: {choices}")


def merge_contributions(contributions: Iterable[dict[str, Any] | None], what: str) -> dict[str, Any]:
    """One dict from the dicts a contribution hook returned; two plugins giving one key two values is an error.

    ``what`` names the keys in the error, e.g. "training argument".
    """
    merged: dict[str, Any] = {}
    for contribution in contributions:
        for key, value in (contribution or {}).items():
            if key in merged and merged[key] != value:
                raise FtkError(f"plugins disagree on the {what} {key!r}: {merged[key]!r} vs {value!r}")
            merged[key] = value
    return merged
