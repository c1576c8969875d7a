"""One lifecycle for every command that takes a config: prepare, then run.

``prepare`` reads the config and its overrides, loads the plugins it names, validates it against
the schema, the plugins' sections and registrations and their ``config_problems``, then asks the
``check_environment`` hook whether this machine can do what the command is for.  Only then does
a command touch data or models, so a run that cannot start fails in a second, before anything
is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ftk.core.config.loader import load_config
from ftk.core.errors import FtkError

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig
    from ftk.core.hooks import Hooks
    from ftk.core.plugins import FtkPluginManager
    from ftk.core.registry import Registry

#: What a command loads the model for; plugins skip checks that do not apply (``hookspecs``).
Purpose = Literal["validate", "preprocess", "train", "inference", "merge"]
#: The purposes that train (or check a config for training): for what only training uses.
TRAINING = ("validate", "train")
#: The purposes that load the model as the config describes it (``merge`` loads full precision).
CONFIGURED_MODEL = ("validate", "train", "inference")


@dataclass
class Prepared:
    """A validated config with its plugins, ready to run; ``machine_problem`` when it was only noted."""

    cfg: FtkConfig
    manager: FtkPluginManager
    machine_problem: str | None = None

    @property
    def hooks(self) -> Hooks:
        """The typed hook calls of the loaded plugins."""
        return self.manager.hooks

    @property
    def registry(self) -> Registry:
        """What the plugins registered."""
        return self.manager.collect_registrations()


def prepare(
    config: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    purpose: Purpose = "train",
    manager: FtkPluginManager | None = None,
    machine_problems_are_errors: bool = True,
) -> Prepared:
    """Validate ``config`` with its plugins and check this machine for ``purpose``.

    A machine problem is an FtkError, unless ``machine_problems_are_errors`` is false (``ftk
    validate`` reports it as a note and still succeeds).
    """
    cfg, manager = load_config(config, overrides, manager=manager)
    try:
        manager.hooks.check_environment(cfg, purpose)
    except FtkError as exc:
        if machine_problems_are_errors:
            raise
        return Prepared(cfg, manager, str(exc))
    return Prepared(cfg, manager)
