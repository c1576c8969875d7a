"""The ``ftk`` command line: parse, run the command, turn an FtkError into one line and an exit code.

The commands are the built-in ones (``ftk.commands``) and those plugins register; every one that
takes a config also takes ``--key value`` overrides of its top-level keys.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence

from ftk import __version__
from ftk.commands import CORE_COMMANDS, core_commands
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


#: Loggers of libraries ftk uses whose warnings are not the user's business; ``--verbose`` shows them.
#: kernels: "Skipping publisher trust check for 'kernels-community/...' because Hugging Face Hub is
#: in offline mode"; bitsandbytes (imported by peft on CPU): "Failed to load CPU gemm_4bit_forward
#: from kernels-community: ..., Please make sure you already `pip install kernels`".
QUIET_LOGGERS = ("kernels", "bitsandbytes")
#: Warnings ftk's dependencies raise about each other (peft < 0.22 reads transformers' deprecated
#: ``is_gradient_checkpointing``), as (message regex, category).
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)


def quiet_third_party(verbose: bool) -> None:
    """Silence what ftk's dependencies print that a user can do nothing about, unless ``verbose``.

    Third-party warnings go below ERROR, known cross-library deprecation warnings are ignored,
    and tqdm bars (datasets, transformers, huggingface_hub) written to a log rather than a
    terminal print a line every few seconds of a long step instead of redrawing
    (``ftk.integrations.tqdm_lines``).  ``--verbose`` leaves all of it as the libraries do it.
    """
    if verbose:
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    from ftk.integrations.tqdm_lines import print_lines_when_not_a_terminal

    print_lines_when_not_a_terminal()


#: Commands that read the whole parser (every other command's arguments), not only their own.
WHOLE_PARSER_COMMANDS = ("completion",)


def chosen_command(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The command ``argv`` runs: its first word that is not an option, if that is a command name."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in names else None
    return None


def build_parser(manager: FtkPluginManager, command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with the built-in commands and every plugin-registered command.

    With ``command``, only that command's arguments are declared (the others are listed with their
    one-line help): declaring a command's arguments imports its module, which may import torch.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show tracebacks for errors, and the warnings and progress bars of the libraries ftk uses",
    )

    parser = argparse.ArgumentParser(
        prog="ftk",
        description="Fine-tune causal language models (full, LoRA, QLoRA) from one YAML config.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"ftk {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in [*core_commands(), *manager.collect_registrations().commands.values()]:
        sub = subparsers.add_parser(entry.name, parents=[common], help=entry.help)
        if command is None or command in WHOLE_PARSER_COMMANDS or entry.name == command:
            entry.add_arguments(sub)
        sub.set_defaults(run=entry.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ftk`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or "-v" in argv
    quiet_third_party(verbose)
    try:
        manager = create_plugin_manager()
        names = [*CORE_COMMANDS, *manager.collect_registrations().commands]
        parser = build_parser(manager, chosen_command(argv, names) or "")
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
