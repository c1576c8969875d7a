"""Every command explains itself: a one-line summary in ``ftk --help`` and its own ``--help``."""

from __future__ import annotations

import re

import pytest

from ftk.cli import build_parser
from ftk.core.plugins import create_plugin_manager


@pytest.fixture(scope="module")
def parser():
    return build_parser(create_plugin_manager())


def summaries(parser) -> dict[str, str]:
    (action,) = parser._subparsers._group_actions  # argparse keeps the subcommands here
    return {choice.dest: choice.help for choice in action._choices_actions}


def test_every_command_has_a_lowercase_one_line_summary(parser):
    helps = summaries(parser)
    assert {"train", "preprocess", "validate", "eval", "generate", "merge-lora", "tiny-model"} <= set(helps)
    for name, text in helps.items():
        assert text and text[0].islower() and not text.endswith("."), (name, text)


def test_each_command_help_shows_its_usage_and_exits_zero(parser, capsys):
    for command in summaries(parser):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert re.match(rf"usage: ftk {re.escape(command)} ", capsys.readouterr().out), command


def test_top_level_help_has_examples(parser, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "ftk train examples/quickstart.yaml" in out
