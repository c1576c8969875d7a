"""``ftk validate``: check a config and print it with every default filled in.

It runs none of the code the config names: the modules of ``plugins:`` and of a dataset's
``type: pkg.module.function`` are checked from their source (docs/security.md).  ``--import``
imports them, as ``ftk train`` does, and checks what they register.
"""

from __future__ import annotations

import argparse

import yaml
from rich.console import Console

from ftk.commands.common import add_config_argument, add_import_argument
from ftk.core.config.loader import dump_config
from ftk.core.lifecycle import prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ftk validate CONFIG [--import]``."""
    add_config_argument(parser)
    add_import_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Print ``valid`` and the resolved config; a machine that cannot train it gets a note, not an error.

    What could not be checked without running the config's code gets a note too.
    """
    prepared = prepare(
        args.config,
        args.overrides,
        purpose="validate",
        manager=args.manager,
        machine_problems_are_errors=False,
        run_config_code=args.import_code,
    )
    console = Console()
    console.print(f"[green]{args.config}: valid[/]", highlight=False)

    def note(text: str) -> None:
        console.print(f"note: {text}", markup=False, highlight=False, soft_wrap=True)

    if prepared.machine_problem is not None:
        for line in prepared.machine_problem.splitlines():
            note(f"this machine cannot train it: {line}")
    for line in prepared.notes:
        note(line)
    resolved = {**dump_config(prepared.cfg), **prepared.unchecked}
    console.print(yaml.safe_dump(resolved, sort_keys=False), markup=False, highlight=False)
    return 0
