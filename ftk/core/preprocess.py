"""``ftk preprocess``: tokenize, mask and cache the data, then report what was done."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ftk.core.config.schema import FtkConfig
from ftk.core.data.debug import legend, render_row
from ftk.core.data.pipeline import PreparedData, prepare_data
from ftk.core.model import load_tokenizer
from ftk.core.plugins import FtkPluginManager


def stats_table(data: PreparedData) -> Table:
    """Per-source rows kept and dropped, and token counts."""
    table = Table(title="datasets")
    for column in ("source", "rows", "kept", "too long", "nothing trained", "tokens", "trained tokens"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for s in data.sources:
        table.add_row(
            s.path,
            f"{s.rows:,}",
            f"{s.kept:,}",
            f"{s.too_long:,}",
            f"{s.nothing_trained:,}",
            f"{s.tokens:,}",
            f"{s.trained_tokens:,}",
        )
    return table


def run_preprocess(
    cfg: FtkConfig, manager: FtkPluginManager, console: Console, debug_rows: int = 0, use_cache: bool = True
) -> PreparedData:
    """Prepare the datasets of ``cfg`` into the cache; with ``debug_rows``, print that many rows."""
    tokenizer = load_tokenizer(cfg, manager.hook)
    data = prepare_data(cfg, tokenizer, manager.collect_registrations(), use_cache=use_cache)
    console.print(stats_table(data))
    eval_rows = len(data.eval) if data.eval is not None else 0
    origin = "reused from cache" if data.from_cache else "written"
    console.print(
        f"train rows: {len(data.train):,}  eval rows: {eval_rows:,}  cache {origin}: {data.cache_dir}",
        markup=False,
        highlight=False,
    )
    if debug_rows:
        console.print(legend())
        for index in range(min(debug_rows, len(data.train))):
            console.print(render_row(data.train[index], tokenizer, index))
    return data
