"""``ftk validate``: check a config and print it with every default filled in."""

from __future__ import annotations

import argparse

import yaml
from rich.console import Console

from ftk.commands.common import add_config_argument
from ftk.core.config.loader import dump_config
from ftk.core.lifecycle import prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ftk validate CONFIG``."""
    add_config_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Print ``valid`` and the resolved config; a machine that cannot train it gets a note, not an error."""
    prepared = prepare(
        args.config,
        args.overrides,
        purpose="validate",
        manager=args.manager,
        machine_problems_are_errors=False,
    )
    console = Console()
    console.print(f"[green]{args.config}: valid[/]", highlight=False)
    if prepared.machine_problem is not None:
        for line in prepared.machine_problem.splitlines():
            console.print(
                f"note: this machine cannot train it: {line}", markup=False, highlight=False, soft_wrap=True
            )
    console.print(yaml.safe_dump(dump_config(prepared.cfg), sort_keys=False), markup=False, highlight=False)
    return 0
