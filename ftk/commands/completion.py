"""``ftk completion bash|zsh``: a completion script built from the argument parser (plugin commands included)."""

from __future__ import annotations

import argparse

SCRIPT = """\
# ftk completion for bash (and zsh with bashcompinit): eval "$(ftk completion bash)"
_ftk_complete() {{
    local current="${{COMP_WORDS[COMP_CWORD]}}"
    local command=""
    local word
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$word" in -*) ;; *) command="$word"; break ;; esac
    done
    local options=""
    case "$command" in
{cases}
        "") COMPREPLY=($(compgen -W "{commands} {global_options}" -- "$current")); return ;;
    esac
    if [[ "$current" == -* ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$current"))
    else
        COMPREPLY=($(compgen -f -- "$current"))
    fi
}}
complete -o filenames -F _ftk_complete ftk
"""


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(option for action in parser._actions for option in action.option_strings)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A completion script for ``shell`` (bash, or zsh through bashcompinit) covering every command."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, subparser in sorted(subparsers.choices.items()):
        cases.append(f'        {name}) options="{" ".join(_options(subparser))}" ;;')
    script = SCRIPT.format(
        cases="\n".join(cases),
        commands=" ".join(sorted(subparsers.choices)),
        global_options=" ".join(_options(parser)),
    )
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ftk completion SHELL``."""
    parser.description = (
        "Print a completion script for bash (zsh: run `autoload bashcompinit && bashcompinit` first). "
        'Enable it with: eval "$(ftk completion bash)"'
    )
    parser.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")


def run(args: argparse.Namespace) -> int:
    """Print the script for the whole ``ftk`` parser."""
    print(completion_script(args.parser, args.shell), end="")
    return 0
