"""What the registration hooks fill: commands, config sections and prompt strategies."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from ftk.core.errors import FtkError

Features = dict[str, list[int]]
#: What a strategy's row function returns: one example, or several (e.g. a document split in chunks).
RowFeatures = Features | list[Features]


@dataclass(frozen=True)
class Command:
    """A CLI subcommand contributed by a plugin."""

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


class CommandRegistrar(Protocol):
    def __call__(
        self,
        name: str,
        help: str,
        add_arguments: Callable[[argparse.ArgumentParser], None],
        run: Callable[[argparse.Namespace], int | None],
    ) -> None: ...


class SectionRegistrar(Protocol):
    def __call__(self, name: str, model: type[BaseModel]) -> None: ...


class StrategyRegistrar(Protocol):
    def __call__(
        self,
        name: str,
        build: Callable[..., Callable[[dict[str, Any]], RowFeatures]],
        options_model: type[BaseModel] | None = None,
    ) -> None: ...


@dataclass
class Registry:
    """Everything the registration hooks added, keyed by name; a name registered twice is an error."""

    commands: dict[str, Command] = field(default_factory=dict)
    sections: dict[str, type[BaseModel]] = field(default_factory=dict)
    section_owners: dict[str, str] = field(default_factory=dict)
    strategies: dict[str, Strategy] = field(default_factory=dict)

    @staticmethod
    def _taken(kind: str, name: str, plugin: str, owner: str) -> FtkError:
        return FtkError(f"plugin {plugin!r}: {kind} {name!r} is already registered by plugin {owner!r}")

    def command_registrar(self, plugin: str) -> CommandRegistrar:
        """Return the ``register`` callback handed to ``register_commands`` for ``plugin``."""

        def register(name, help, add_arguments, run):  # noqa: A002 - mirrors argparse's own name
            if name in self.commands:
                raise self._taken("command", name, plugin, self.commands[name].plugin)
            self.commands[name] = Command(name, help, add_arguments, run, plugin)

        return register

    def section_registrar(self, plugin: str) -> SectionRegistrar:
        """Return the ``register`` callback handed to ``register_config_sections`` for ``plugin``."""

        def register(name, model):
            if name in self.sections:
                raise self._taken("config section", name, plugin, self.section_owners[name])
            self.sections[name] = model
            self.section_owners[name] = plugin

        return register

    def strategy_registrar(self, plugin: str) -> StrategyRegistrar:
        """Return the ``register`` callback handed to ``register_prompt_strategies`` for ``plugin``."""

        def register(name, build, options_model=None):
            if name in self.strategies:
                raise self._taken("prompt strategy", name, plugin, self.strategies[name].plugin)
            self.strategies[name] = Strategy(name, build, options_model, plugin)

        return register


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
