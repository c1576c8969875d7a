"""``ftk preprocess``: tokenize, mask and cache the data, then report what was done."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ftk.commands.common import add_config_argument
from ftk.commands.preprocess_debug import print_rows, print_table
from ftk.core.config.schema import FtkConfig
from ftk.core.data.pipeline import PreparedData, prepare_data
from ftk.core.data.tokenize import SourceStats
from ftk.core.lifecycle import prepare
from ftk.core.model import load_tokenizer
from ftk.core.plugins import FtkPluginManager

COLUMNS = ("rows", "kept", "invalid", "too long", "truncated", "nothing trained", "tokens", "trained tokens")


def stats_table(title: str, sources: list[SourceStats]) -> Table:
    """Per-source rows kept and dropped (by reason) and token counts."""
    table = Table(title=title)
    table.add_column("source")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for s in sources:
        values = (
            s.rows,
            s.kept,
            s.invalid,
            s.too_long,
            s.truncated,
            s.nothing_trained,
            s.tokens,
            s.trained_tokens,
        )
        table.add_row(f"{s.path} ({s.split})", *(f"{v:,}" for v in values))
    return table


def report(data: PreparedData, console: Console) -> None:
    """Print the per-source tables, skipped-row examples and where the cache is."""
    print_table(console, stats_table("datasets", data.sources))
    if data.eval_sources:
        print_table(console, stats_table("test_datasets", data.eval_sources))
    for source in [*data.sources, *data.eval_sources]:
        for problem in source.invalid_examples:
            console.print(f"skipped {problem}", markup=False, highlight=False, soft_wrap=True)
    summary = data.summary()
    origin = "reused" if data.from_cache else "written"
    console.print(
        f"train rows: {summary['train_rows']:,}  eval rows: {summary['eval_rows']:,}  "
        f"cache {origin}: {data.cache_dir}" + data.packing_note() + data.dropped_note(),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def run_preprocess(
    cfg: FtkConfig,
    manager: FtkPluginManager,
    console: Console,
    debug_rows: int = 0,
    text_only: bool = False,
    as_json: bool = False,
    use_cache: bool = True,
) -> PreparedData:
    """Prepare the datasets of ``cfg`` into the cache; report as a table, as JSON, or row by row."""
    tokenizer, _ = load_tokenizer(cfg, manager.hooks)
    data = prepare_data(cfg, tokenizer, manager.collect_registrations(), use_cache=use_cache)
    if as_json:
        print(json.dumps(data.summary()))
        return data
    report(data, console)
    if debug_rows:
        print_rows(console, data.train, tokenizer, debug_rows, text_only=text_only)
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ftk preprocess CONFIG [--debug ...] [--json] [--no-cache]``."""
    add_config_argument(parser)
    parser.add_argument("--debug", action="store_true", help="show rows token by token, trained in colour")
    parser.add_argument(
        "--debug-num-examples", type=int, default=3, metavar="N", help="rows shown by --debug (default 3)"
    )
    parser.add_argument(
        "--debug-text-only", action="store_true", help="with --debug: decoded text, trained spans highlighted"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="tokenize again even if cached; the new cache entry replaces the old one",
    )


def run(args: argparse.Namespace) -> int:
    """Prepare the config's data as ``args`` say."""
    prepared = prepare(args.config, args.overrides, purpose="preprocess", manager=args.manager)
    run_preprocess(
        prepared.cfg,
        prepared.manager,
        Console(),
        debug_rows=args.debug_num_examples if args.debug else 0,
        text_only=args.debug_text_only,
        as_json=args.json,
        use_cache=not args.no_cache,
    )
    return 0
