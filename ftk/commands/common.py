"""What the commands share on the command line: the config argument and its overrides."""

from __future__ import annotations

import argparse


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The positional ``config``; the command also takes ``--key value`` overrides of top-level keys."""
    parser.add_argument("config", help="YAML config file")
    parser.set_defaults(takes_overrides=True)
    parser.epilog = (
        "Any top-level config key can be overridden: --learning_rate 3e-4 --max_steps 10 "
        "(values are read as YAML, validated like the file)."
    )


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value
