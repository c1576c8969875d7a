"""The ``ftk`` command line: parse, call the core, print.

Every command that takes a config also takes ``--key value`` overrides of its top-level keys.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

import yaml
from rich.console import Console
from rich.table import Table

from ftk import __version__
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

CONFIG_COMMANDS = ("train", "preprocess", "validate", "eval", "generate")


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.epilog = (
        "Any top-level config key can be overridden: --learning_rate 3e-4 --max_steps 10 "
        "(values are read as YAML, validated like the file)."
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def build_parser(manager: FtkPluginManager) -> argparse.ArgumentParser:
    """The argument parser with the core commands and every plugin-registered command."""
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        parents=[common],
        help="fine-tune a model as a config says",
        description="Fine-tune as the config says: writes the adapter (or full model), metrics.jsonl, "
        "summary.md and loss.png to output_dir. Ctrl-C or SIGTERM saves a checkpoint and exits; "
        "--auto_resume true continues from the latest checkpoint.",
    )
    _add_config_argument(train)
    train.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="train in N processes on this machine (one per GPU; gloo DDP on CPU)",
    )

    preprocess = commands.add_parser(
        "preprocess", parents=[common], help="tokenize, mask and cache the datasets of a config"
    )
    _add_config_argument(preprocess)
    preprocess.add_argument(
        "--debug", action="store_true", help="show rows token by token, trained in colour"
    )
    preprocess.add_argument(
        "--debug-num-examples", type=int, default=3, metavar="N", help="rows shown by --debug (default 3)"
    )
    preprocess.add_argument(
        "--debug-text-only", action="store_true", help="with --debug: decoded text, trained spans highlighted"
    )
    preprocess.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    preprocess.add_argument("--no-cache", action="store_true", help="tokenize again even if cached")

    validate = commands.add_parser(
        "validate", parents=[common], help="check a config and print it with defaults filled in"
    )
    _add_config_argument(validate)

    evaluate = commands.add_parser(
        "eval", parents=[common], help="eval loss and perplexity of a model on the config's eval set"
    )
    _add_config_argument(evaluate)
    evaluate.add_argument(
        "--adapter",
        metavar="DIR",
        help="evaluate this peft adapter on base_model, or this full model directory (default: the base model)",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object with the result")
    evaluate.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        help="examples per forward pass (default: eval_batch_size, else micro_batch_size)",
    )

    generate = commands.add_parser(
        "generate",
        parents=[common],
        help="generate a reply to a prompt with the trained model",
        description="Print a model's reply to PROMPT (or to stdin). Greedy unless --temperature is above 0.",
    )
    _add_config_argument(generate)
    generate.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt; absent or '-': read stdin")
    source = generate.add_mutually_exclusive_group()
    source.add_argument(
        "--adapter", metavar="DIR", help="this peft adapter on base_model (default: output_dir)"
    )
    source.add_argument("--model", metavar="DIR", help="this full or merged model directory")
    source.add_argument("--base", action="store_true", help="the base model, untrained")
    generate.add_argument(
        "--max-new-tokens", type=_positive_int, metavar="N", help="most tokens to generate (default 256)"
    )
    generate.add_argument(
        "--temperature", type=float, default=0.0, metavar="T", help="0 (default): greedy; above 0: sample"
    )
    generate.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling share, when sampling")
    generate.add_argument("--system", metavar="TEXT", help="system message before the prompt")
    generate.add_argument("--raw", action="store_true", help="no chat template: a plain completion of PROMPT")
    generate.add_argument(
        "--seed", type=int, metavar="S", help="seed for sampling (default: the config's seed)"
    )

    plugins = commands.add_parser("plugins", parents=[common], help="list loaded plugins and their hooks")
    plugins.add_argument("config", nargs="?", help="also load the plugins this config names")

    completion = commands.add_parser(
        "completion",
        parents=[common],
        help="print a shell completion script",
        description="Print a completion script for bash (zsh: run `autoload bashcompinit && bashcompinit` first). "
        'Enable it with: eval "$(ftk completion bash)"',
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")

    for command in manager.collect_registrations().commands.values():
        sub = commands.add_parser(command.name, parents=[common], help=command.help)
        command.add_arguments(sub)
        sub.set_defaults(plugin_command=command)
    return parser


def _print_plugins(manager: FtkPluginManager, console: Console) -> None:
    table = Table(title="ftk plugins")
    for column in ("name", "source", "version"):
        table.add_column(column, no_wrap=True)
    table.add_column("hooks")
    for info in manager.infos.values():
        table.add_row(info.name, info.source, info.version, ", ".join(info.hooks))
    console.print(table)


def _run(args: argparse.Namespace, overrides: list[str], manager: FtkPluginManager, console: Console) -> int:
    from ftk.core.config.loader import dump_config, load_config

    if getattr(args, "plugin_command", None) is not None:
        return int(args.plugin_command.run(args) or 0)
    if args.command == "completion":
        from ftk.completion import completion_script

        print(completion_script(build_parser(manager), args.shell), end="")
        return 0
    if args.command == "plugins":
        if args.config:
            load_config(args.config, overrides, manager=manager)
        _print_plugins(manager, console)
        return 0

    cfg, manager = load_config(args.config, overrides, manager=manager)
    if args.command == "validate":
        console.print(f"[green]{args.config}: valid[/]", highlight=False)
        console.print(yaml.safe_dump(dump_config(cfg), sort_keys=False), markup=False, highlight=False)
        return 0
    if args.command == "preprocess":
        from ftk.core.preprocess import run_preprocess

        run_preprocess(
            cfg,
            manager,
            console,
            debug_rows=args.debug_num_examples if args.debug else 0,
            text_only=args.debug_text_only,
            as_json=args.json,
            use_cache=not args.no_cache,
        )
        return 0
    if args.command == "eval":
        from ftk.core.eval_command import result_json, result_line, run_eval

        result = run_eval(cfg, manager, adapter=args.adapter, batch_size=args.batch_size)
        if args.json:
            print(result_json(result))
        else:
            console.print(result_line(result), highlight=False)
        return 0
    if args.command == "generate":
        from ftk.generate import DEFAULT_MAX_NEW_TOKENS, GenerateOptions, read_prompt, run_generate

        options = GenerateOptions(
            max_new_tokens=args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            temperature=args.temperature,
            top_p=args.top_p,
            system=args.system,
            raw=args.raw,
            seed=args.seed,
        )
        prompt = read_prompt(args.prompt, sys.stdin)
        run_generate(
            cfg, manager, prompt, options, adapter=args.adapter, model_dir=args.model, base=args.base
        )
        return 0
    from ftk.core.train import run_training

    if args.nproc_per_node > 1:
        from ftk.core.launch import launch

        return launch(args.nproc_per_node, _without_nproc(args.argv))
    run_training(cfg, manager)  # prints progress and the summary on stderr; a stop by signal ends with 0
    return 0


def _without_nproc(argv: Sequence[str]) -> list[str]:
    """The command line minus ``--nproc-per-node N`` (the launched processes train as one each)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            kept.append(arg)
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ftk`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or "-v" in argv
    console = Console()
    try:
        manager = create_plugin_manager()
        parser = build_parser(manager)
        args, overrides = parser.parse_known_args(argv)
        args.argv = argv
        if overrides and args.command not in CONFIG_COMMANDS and args.command != "plugins":
            parser.error(f"unrecognized arguments: {' '.join(overrides)}")
        return _run(args, overrides, manager, console)
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
