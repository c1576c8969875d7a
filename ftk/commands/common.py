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


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    """``--import``: import the code the config names (``plugins:``, ``type: pkg.module.function``) to check it."""
    parser.add_argument(
        "--import",
        dest="import_code",
        action="store_true",
        help=(
            "also import the modules the config names (plugins:, type: pkg.module.function) and check "
            "what they register; this runs their code, as ftk train does (docs/security.md)"
        ),
    )


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def split_stray_words(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Separate words that are no ``--key value`` override from the overrides argparse left over.

    argparse fills an optional positional (``ftk generate CONFIG [PROMPT]``) only from the words
    before the first option, so in ``ftk generate cfg.yaml --model DIR "a prompt"`` the prompt is
    left over with the overrides.  Returns (those words, the overrides): a word right after an
    override's ``--key`` (without ``=``) is its value, any other word that is not an option is a
    stray word.
    """
    words: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(overrides):
        word = overrides[index]
        if word.startswith("--") and word != "--":
            rest.append(word)
            takes_value = "=" not in word and index + 1 < len(overrides)
            if takes_value and not overrides[index + 1].startswith("--"):
                rest.append(overrides[index + 1])
                index += 1
        else:
            words.append(word)
        index += 1
    return words, rest
