"""End-of-run reports (the ``run_report`` plugin): the loss plot and the summary table."""

from __future__ import annotations

import io
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console
from transformers import TrainerState

from ftk import __version__
from ftk.core.plugins import FtkPluginManager
from ftk.plugins import run_report
from ftk.plugins.run_report.plot import LossSeries, loss_series, moving_average, plot_title, write_loss_plot
from ftk.plugins.run_report.summary import (
    format_bytes,
    format_duration,
    mean_tokens_per_second,
    print_summary,
    summary_markdown,
    summary_rows,
    train_loss_trend,
    write_summary,
)
from tests.helpers import make_config

NAN, INF = float("nan"), float("inf")

# Trainer's log_history of a short run: logging every 2 steps, eval every 6, a final summary entry.
# Tokens grow by 1,000 per log; the intervals took 10, 5, 5, 5, 5 and 10 seconds.
LOG_HISTORY = [
    {
        "loss": 2.0,
        "grad_norm": 1.5,
        "learning_rate": 1e-4,
        "num_tokens": 1000,
        "tokens_per_second": 100.0,
        "epoch": 0.1,
        "step": 2,
    },
    {
        "loss": 1.8,
        "grad_norm": 1.2,
        "learning_rate": 1e-4,
        "num_tokens": 2000,
        "tokens_per_second": 200.0,
        "epoch": 0.2,
        "step": 4,
    },
    {
        "loss": 1.6,
        "grad_norm": 1.0,
        "learning_rate": 1e-4,
        "num_tokens": 3000,
        "tokens_per_second": 200.0,
        "epoch": 0.3,
        "step": 6,
    },
    {"eval_loss": 1.7, "eval_runtime": 0.5, "epoch": 0.3, "step": 6},
    {
        "loss": 1.4,
        "grad_norm": 0.9,
        "learning_rate": 1e-4,
        "num_tokens": 4000,
        "tokens_per_second": 200.0,
        "epoch": 0.4,
        "step": 8,
    },
    {
        "loss": 1.2,
        "grad_norm": 0.8,
        "learning_rate": 1e-4,
        "num_tokens": 5000,
        "tokens_per_second": 200.0,
        "epoch": 0.5,
        "step": 10,
    },
    {
        "loss": 1.0,
        "grad_norm": 0.7,
        "learning_rate": 1e-4,
        "num_tokens": 6000,
        "tokens_per_second": 100.0,
        "epoch": 0.6,
        "step": 12,
    },
    {"eval_loss": 1.75, "eval_runtime": 0.5, "epoch": 0.6, "step": 12},
    {"train_runtime": 83.4, "train_loss": 1.5, "total_flos": 1.0, "epoch": 0.6, "step": 12},
]


def fake_trainer(log_history: list[dict], **state: object) -> SimpleNamespace:
    """What the report code reads from a Trainer: its ``state``."""
    return SimpleNamespace(state=TrainerState(log_history=log_history, **state))


def colour_pixels(image: np.ndarray, rgb: tuple[int, int, int]) -> int:
    """How many pixels of an RGBA float image are (nearly) the colour ``rgb`` (0-255)."""
    target = np.array(rgb) / 255
    return int((np.abs(image[..., :3] - target).max(axis=-1) < 0.02).sum())


TAB_ORANGE, TAB_RED = (255, 127, 14), (214, 39, 40)


# --- loss_series and the plot ------------------------------------------------------------------


def test_loss_series_splits_train_and_eval_points_by_step():
    assert loss_series(LOG_HISTORY) == LossSeries(
        train_steps=[2, 4, 6, 8, 10, 12],
        train_loss=[2.0, 1.8, 1.6, 1.4, 1.2, 1.0],
        eval_steps=[6, 12],
        eval_loss=[1.7, 1.75],
        nonfinite_steps=[],
    )


def test_loss_series_leaves_out_non_finite_values_and_lists_their_steps():
    history = [
        {"loss": 3.0, "step": 1},
        {"loss": NAN, "step": 2},
        {"eval_loss": INF, "step": 2},
        {"loss": 2.5},  # no step: not a point
        {"loss": -INF, "step": 3},
        {"eval_loss": 2.9, "step": 3},
        {"train_runtime": 4.0, "train_loss": NAN, "step": 3},
    ]
    assert loss_series(history) == LossSeries([1], [3.0], [3], [2.9], nonfinite_steps=[2, 2, 3])


def test_moving_average_is_centred_and_shrinks_at_the_ends():
    assert moving_average([1.0, 2.0, 3.0, 10.0, 5.0], 1) == [1.0, 2.0, 5.0, 6.0, 5.0]
    assert moving_average([1.0, 2.0, 3.0, 10.0, 5.0], 2) == [1.0, 2.0, 4.2, 6.0, 5.0]
    assert moving_average([4.0, 6.0], 0) == [4.0, 6.0]
    assert moving_average([], 3) == []


def test_write_loss_plot_writes_a_png_of_the_fixed_size(tmp_path):
    path = write_loss_plot(LOG_HISTORY, tmp_path / "plots" / "loss.png", "loss: tiny")

    assert path == tmp_path / "plots" / "loss.png"
    image = imread(path)
    assert image.shape == (450, 800, 4)
    assert colour_pixels(image, TAB_ORANGE) > 50  # eval loss markers
    assert colour_pixels(image, TAB_RED) == 0  # no NaN marks
    assert sorted(p.name for p in path.parent.iterdir()) == ["loss.png"]  # no temporary file left


def test_loss_plot_of_a_long_run_without_eval_marks_non_finite_steps(tmp_path):
    history = [{"loss": 3.0 / (1 + step / 10), "step": step} for step in range(1, 101)]
    history[60]["loss"] = NAN
    path = write_loss_plot(history, tmp_path / "loss.png", "loss: tiny")

    image = imread(path)
    assert image.shape == (450, 800, 4)
    assert colour_pixels(image, TAB_ORANGE) == 0  # no eval points, no eval line
    assert colour_pixels(image, TAB_RED) > 50  # the dashed line at step 61


@pytest.mark.parametrize(
    "history",
    [[], [{"train_runtime": 1.0, "train_loss": 2.0, "step": 0}], [{"loss": NAN, "step": 1}]],
    ids=["empty", "summary only", "only NaN"],
)
def test_no_plot_when_no_finite_loss_was_logged(tmp_path, history):
    assert write_loss_plot(history, tmp_path / "loss.png", "loss: tiny") is None
    assert list(tmp_path.iterdir()) == []


def test_plot_title_names_a_local_model_by_its_folder(tmp_path):
    local = tmp_path / "models" / "Qwen3-mini"
    local.mkdir(parents=True)
    assert plot_title(make_config(base_model=f"{local}/", output_dir=tmp_path)) == "loss: Qwen3-mini"
    assert (
        plot_title(make_config(base_model="Qwen/Qwen3-0.6B", output_dir=tmp_path)) == "loss: Qwen/Qwen3-0.6B"
    )


# --- the plugin's hooks --------------------------------------------------------------------------


def test_run_report_plugin_implements_the_report_hook():
    manager = FtkPluginManager()
    manager.load_builtins()
    assert manager.infos["run_report"].hooks == ["run_finished"]


def test_run_finished_writes_loss_png_and_the_summary_into_output_dir(tmp_path, capsys):
    cfg = make_config(output_dir=tmp_path / "out")
    trainer = fake_trainer(LOG_HISTORY, global_step=12)
    run_report.run_finished(cfg=cfg, trainer=trainer, status="finished", rows=[("plugin row", "value")])

    plot = tmp_path / "out" / "loss.png"
    assert imread(plot).shape == (450, 800, 4)
    summary = (tmp_path / "out" / "summary.md").read_text()
    labels = [
        line.split(" | ")[0].removeprefix("| ") for line in summary.splitlines() if line.startswith("| ")
    ]
    assert labels[:2] == ["item", "status"]
    assert labels[-3:] == ["plugin row", "loss plot", "output directory"]
    assert f"| loss plot | {plot} |" in summary
    assert "training summary" in capsys.readouterr().err  # the same table, printed


def test_only_the_main_process_writes_reports(tmp_path):
    cfg = make_config(output_dir=tmp_path)
    trainer = fake_trainer(LOG_HISTORY, is_world_process_zero=False)
    run_report.run_finished(cfg=cfg, trainer=trainer, status="finished", rows=[])
    assert not (tmp_path / "loss.png").exists() and not (tmp_path / "summary.md").exists()


def test_no_loss_plot_row_for_a_run_without_loss(tmp_path):
    cfg = make_config(output_dir=tmp_path)
    write_loss_plot(LOG_HISTORY, tmp_path / "loss.png", "an earlier run")
    run_report.run_finished(cfg=cfg, trainer=fake_trainer([]), status="finished", rows=[])
    assert "loss plot" not in (tmp_path / "summary.md").read_text()


# --- the summary -----------------------------------------------------------------------------------


def test_formatting():
    assert [format_duration(s) for s in (4.24, 59.94, 59.96, 65, 83.4, 7509)] == [
        "4.2s",
        "59.9s",
        "1m 00s",
        "1m 05s",
        "1m 23s",
        "2h 05m 09s",
    ]
    assert format_bytes(1.5 * 2**30) == "1.50 GiB"
    assert format_bytes(300 * 2**20) == "300.0 MiB"


def test_train_loss_trend_averages_up_to_five_values_at_each_end():
    def history(losses):
        return [{"loss": loss, "step": step} for step, loss in enumerate(losses, 1)]

    assert train_loss_trend(history([])) is None
    assert train_loss_trend(history([2.5])) == "2.5000 (one logged value)"
    assert train_loss_trend(history([2.5, 2.0, 1.0])) == "2.5000 → 1.0000 (first and last logged value)"
    twelve = [3.0, 3.0, 3.0, 3.0, 2.5, 9.0, 9.0, 1.5, 1.0, 1.0, 1.0, 1.0]
    assert train_loss_trend(history(twelve)) == "2.9000 → 1.1000 (mean of first/last 5 logged values)"


def test_mean_tokens_per_second_weights_each_interval_by_its_duration():
    assert mean_tokens_per_second(LOG_HISTORY) == 6000 / 40
    # A resumed run: the counter continues; an entry without a rate starts a new interval.
    resumed = [
        {"num_tokens": 1000, "tokens_per_second": 100.0},
        {"num_tokens": 2000},
        {"num_tokens": 3000, "tokens_per_second": 250.0},
    ]
    assert mean_tokens_per_second(resumed) == pytest.approx(2000 / 14)
    assert mean_tokens_per_second([{"loss": 1.0, "step": 1}]) is None


def split_memory_row(rows: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], tuple[str, str]]:
    """The rows without the peak-memory row (its value depends on the process), and that row."""
    index = next(i for i, (label, _) in enumerate(rows) if label.startswith("peak"))
    return rows[:index] + rows[index + 1 :], rows[index]


def test_summary_rows_of_a_finished_run(tmp_path):
    trainer = fake_trainer(
        LOG_HISTORY,
        global_step=12,
        max_steps=20,
        epoch=0.6,
        best_metric=1.7,
        best_model_checkpoint=str(tmp_path / "checkpoint-6"),
    )
    rows = summary_rows(
        make_config(output_dir=tmp_path),
        trainer,
        "finished",
        extra_rows=[("advice", "loss still falling: train longer")],
    )

    rows, memory = split_memory_row(rows)
    assert rows == [
        ("status", "finished"),
        ("optimizer steps", "12 of 20"),
        ("epochs", "0.60"),
        ("runtime", "1m 23s"),
        ("train loss", "1.8000 → 1.2000 (mean of first/last 3 logged values)"),
        ("best eval loss", "1.7000 (perplexity 5.47) at step 6"),
        ("best checkpoint", str(tmp_path / "checkpoint-6")),
        ("final eval loss", "1.7500 at step 12"),
        ("tokens processed", "6,000"),
        ("mean tokens/s", "150"),
        ("advice", "loss still falling: train longer"),
        ("output directory", str(tmp_path)),
    ]
    assert f"{math.exp(1.7):.2f}" == "5.47"
    assert memory[0] in ("peak memory", "peak GPU memory")
    assert re.fullmatch(r"\d+\.\d+ (MiB|GiB) \((process max RSS|CUDA max allocated)\)", memory[1])


def test_summary_rows_of_a_run_stopped_early_leave_out_what_it_did_not_produce(tmp_path):
    history = [
        {"loss": 2.0, "num_tokens": 500, "tokens_per_second": 50.0, "step": 1},
        {"loss": NAN, "num_tokens": 1000, "tokens_per_second": 50.0, "step": 2},
    ]
    trainer = fake_trainer(history, global_step=2, max_steps=100, epoch=0.02)
    rows, _ = split_memory_row(summary_rows(make_config(output_dir=tmp_path), trainer, "diverged at step 2"))
    assert rows == [
        ("status", "diverged at step 2"),
        ("optimizer steps", "2 of 100"),
        ("epochs", "0.02"),
        ("train loss", "2.0000 → nan (first and last logged value)"),
        ("tokens processed", "1,000"),
        ("mean tokens/s", "50"),
        ("output directory", str(tmp_path)),
    ]


def test_best_eval_loss_skips_non_finite_values_and_large_perplexity_stays_readable(tmp_path):
    history = [{"eval_loss": 20.0, "step": 5}, {"eval_loss": NAN, "step": 10}]
    rows, _ = split_memory_row(
        summary_rows(make_config(output_dir=tmp_path), fake_trainer(history, global_step=10), "finished")
    )
    assert ("best eval loss", "20.0000 (perplexity 485,165,195.41) at step 5") in rows
    assert ("final eval loss", "nan at step 10") in rows
    assert ("optimizer steps", "10") in rows  # max_steps unknown


def table_cells(line: str) -> list[str]:
    """The cells of one Markdown table line, backslash escapes undone and ``<br>`` as a line break."""
    cells, cell, chars = [], "", iter(line.strip()[1:])
    for char in chars:
        if char == "\\":
            cell += next(chars)
        elif char == "|":
            cells.append(cell.strip().replace("<br>", "\n"))
            cell = ""
        else:
            cell += char
    return cells


def parse_summary(text: str) -> tuple[list[tuple[str, ...]], list[str]]:
    """Read back the table rows of summary.md and the lines after the table."""
    lines = text.splitlines()
    header = lines.index("| item | value |")
    assert lines[header + 1] == "|---|---|"
    rows = [tuple(table_cells(line)) for line in lines[header + 2 :] if line.startswith("|")]
    other = [line for line in lines[header + 2 :] if line and not line.startswith("|")]
    return rows, other


def test_write_summary_writes_a_markdown_table_that_reads_back(tmp_path):
    rows = [
        ("status", "stopped by SIGTERM at step 12"),
        ("advice", "a | b\nnext line"),
        ("output directory", "C:\\runs\\a|b\\"),
    ]
    path = write_summary(tmp_path / "run" / "summary.md", rows)

    assert path == tmp_path / "run" / "summary.md"
    parsed, other = parse_summary(path.read_text(encoding="utf-8"))
    assert parsed == rows
    assert other == [f"generated by ftk {__version__}"]
    assert path.read_text(encoding="utf-8").startswith("# training summary\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.md"]  # no temporary file left


def test_write_summary_replaces_an_earlier_summary(tmp_path):
    path = tmp_path / "summary.md"
    write_summary(path, [("status", "stopped by SIGINT at step 3")])
    write_summary(path, [("status", "finished")])
    assert path.read_text(encoding="utf-8") == summary_markdown([("status", "finished")])
    assert parse_summary(path.read_text(encoding="utf-8"))[0] == [("status", "finished")]


def test_print_summary_prints_a_titled_table_without_interpreting_markup():
    out = io.StringIO()
    print_summary(
        Console(file=out, width=80, color_system=None), [("status", "finished"), ("note", "[bold]x[/bold]")]
    )
    text = out.getvalue()
    assert text.splitlines()[0].strip() == "training summary"
    assert re.search(r"│ status\s+│ finished\s+│", text)
    assert "[bold]x[/bold]" in text
