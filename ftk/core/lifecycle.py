"""One lifecycle for every command that takes a config: prepare, then run.

``prepare`` reads the config and its overrides, loads the plugins it names, validates it against
the schema, the plugins' sections and registrations and their ``config_problems``, checks the
paths the command will read and write (``ftk.core.config.paths``), then asks the core
(``ftk.core.machine``) and the ``check_environment`` hook whether this machine can do what the
command is for.  Only then does a command touch data or models, so a run that cannot start fails
in a second, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ftk.core.config.loader import ConfigErrors, read_config
from ftk.core.config.paths import path_problems
from ftk.core.errors import FtkError, say
from ftk.core.machine import machine_problems

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
    #: What was left unchecked because the config's code was not run (``run_config_code=False``).
    notes: list[str] = field(default_factory=list)
    #: The top-level keys set aside unchecked: only the config's plugins, not imported, could define them.
    unchecked: dict[str, Any] = field(default_factory=dict)

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
    run_config_code: bool = True,
) -> Prepared:
    """Validate ``config`` with its plugins, check its paths and this machine for ``purpose``.

    A machine problem is an FtkError, unless ``machine_problems_are_errors`` is false (``ftk
    validate`` reports it as a note and still succeeds).  A path that cannot work is always an
    error.  ``run_config_code=False`` (``ftk validate`` without ``--import``) checks the code the
    config names (``plugins:``, ``type: pkg.module.function``) without importing it; what that
    leaves unchecked is in ``Prepared.notes``.
    """
    cfg, manager, source = read_config(config, overrides, manager=manager, run_config_code=run_config_code)
    if purpose != "validate":  # ftk validate lists them with its other notes
        for line in source.rewrite_notes:
            say(f"note: {line}")
    config_dir = source.path.parent
    paths = ConfigErrors(source)
    for loc, message in path_problems(cfg, config_dir, purpose):
        paths.add(loc, message)
    paths.raise_if_any()
    machine = ConfigErrors(source)
    for loc, message in machine_problems(cfg, config_dir, purpose):
        machine.add(loc, message)
    lines = machine.lines()
    try:
        manager.hooks.check_environment(cfg, purpose)
    except FtkError as exc:
        lines += str(exc).splitlines()
    if lines and machine_problems_are_errors:
        raise FtkError("\n".join(lines))
    notes = [*source.rewrite_notes, *source.notes]
    return Prepared(cfg, manager, "\n".join(lines) if lines else None, notes, source.unchecked)
