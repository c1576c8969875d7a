"""``ftk plugins [CONFIG]``: the loaded plugins, where each came from and the hooks it implements.

The plugins a config names are checked from their source, not imported, unless ``--import`` is
given: their row says ``config, not imported`` and lists the hooks their source defines.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from ftk.commands.common import add_import_argument
from ftk.core.config.loader import load_config

#: Columns of a table printed to a pipe or a file (a terminal's own width is used otherwise).
PIPED_WIDTH = 240


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ftk plugins [CONFIG] [--import]``."""
    parser.add_argument("config", nargs="?", help="also list the plugins this config names")
    add_import_argument(parser)
    parser.set_defaults(takes_overrides=True)


def run(args: argparse.Namespace) -> int:
    """Print one table row per plugin."""
    manager = args.manager
    if args.config:
        load_config(args.config, args.overrides, manager=manager, run_config_code=args.import_code)
    table = Table(title="ftk plugins")
    for column in ("name", "source", "version"):
        table.add_column(column, no_wrap=True)
    table.add_column("hooks")
    for info in [*manager.infos.values(), *manager.unimported.values()]:
        table.add_row(info.name, info.source, info.version, ", ".join(info.hooks))
    # Piped or captured output keeps each row on one line, whatever the terminal's width.
    (Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)).print(table)
    return 0
