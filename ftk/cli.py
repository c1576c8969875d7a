"""The ``ftk`` command line: parse, run the command, turn an FtkError into one line and an exit code.

The commands are the built-in ones (``ftk.commands``) and those plugins register; every one that
takes a config also takes ``--key value`` overrides of its top-level keys.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ftk import __version__
from ftk.commands import core_commands
from ftk.core.errors import FtkError
from ftk.core.plugins import FtkPluginManager, create_plugin_manager

EXAMPLES = """examples:
  ftk validate examples/quickstart.yaml                  check a config, print it with defaults
  ftk preprocess examples/quickstart.yaml --debug        show which tokens are trained
  ftk train examples/quickstart.yaml --max_steps 20      train (any key can be overridden)
  ftk eval examples/quickstart.yaml --adapter outputs/quickstart --json
  ftk generate examples/quickstart.yaml "Book a table for two tonight"

docs: docs/README.md (training, scaling, config reference, writing plugins)
"""


def build_parser(manager: FtkPluginManager) -> argparse.ArgumentParser:
    """The argument parser with the built-in commands and every plugin-registered command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", "-v", action="store_true", help="show tracebacks for errors")

    parser = argparse.ArgumentParser(
        prog="ftk",
        description="Fine-tune causal language models (full, LoRA, QLoRA) from one YAML config.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"ftk {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in [*core_commands(), *manager.collect_registrations().commands.values()]:
        sub = subparsers.add_parser(command.name, parents=[common], help=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ftk`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or "-v" in argv
    try:
        manager = create_plugin_manager()
        parser = build_parser(manager)
        args, overrides = parser.parse_known_args(argv)
        if overrides and not getattr(args, "takes_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        args.overrides, args.argv, args.manager, args.parser = overrides, argv, manager, parser
        return int(args.run(args) or 0)
    except FtkError as exc:
        if verbose:
            traceback.print_exc()
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
