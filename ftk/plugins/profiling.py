"""Built-in plugin: profile a window of optimizer steps with ``torch.profiler``.

``profiler_steps: N`` turns it on (``profiler_steps_start`` skips steps first; the ``profiler:``
section holds the profiler's own settings).  The window's Chrome trace, a CUDA memory snapshot on
a GPU, and the top operations by time and memory (printed, and in ``top_ops.txt``) go to
``output_dir/profiler/`` (``docs/training.md``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, NonNegativeInt, PositiveInt, RootModel
from rich.console import Console
from rich.table import Table

from ftk.core.callbacks import TrainerCallback
from ftk.core.config.schema import FtkConfig, StrictModel
from ftk.core.hookspecs import hookimpl
from ftk.core.registry import Register

if TYPE_CHECKING:
    import torch

STEPS_KEY = "profiler_steps"
START_KEY = "profiler_steps_start"
SETTINGS_KEY = "profiler"
PROFILER_DIR = "profiler"
TOP_OPS_FILE = "top_ops.txt"
STEP_MARKER = "ProfilerStep#"
STEP_MARKER_KEY = "ProfilerStep"
#: Allocation events the CUDA allocator keeps while recording its history.
MEMORY_HISTORY_ENTRIES = 100_000


class ProfilerSteps(RootModel[PositiveInt]):
    """How many optimizer steps to profile (a top-level key); setting it turns profiling on."""


class ProfilerStepsStart(RootModel[NonNegativeInt]):
    """Optimizer steps to run before profiling starts (a top-level key; 0, the default: from step 1)."""


class ProfilerSettings(StrictModel):
    """Config section ``profiler:``: what the profiler records and how much of it is printed."""

    record_shapes: bool = Field(True, description="Record the input shapes of each operation.")
    profile_memory: bool = Field(
        True,
        description="Record memory allocated and freed by each operation; on CUDA also dump a memory snapshot.",
    )
    with_stack: bool = Field(False, description="Record Python stacks in the trace (slower, larger).")
    row_limit: PositiveInt = Field(15, description="Rows in each table of top operations.")


@dataclass(frozen=True)
class ProfileWindow:
    """The optimizer steps to profile: indices ``start`` to ``end - 1``, counting completed steps from 0."""

    start: int
    steps: int
    settings: ProfilerSettings

    @property
    def end(self) -> int:
        """The index of the first step after the window."""
        return self.start + self.steps

    def describe(self) -> str:
        """The window as the logs number steps (from 1): ``steps 4-5`` or ``step 4``."""
        first, last = self.start + 1, self.end
        return f"step {first}" if first == last else f"steps {first}-{last}"


def profile_window(cfg: FtkConfig) -> ProfileWindow | None:
    """The window the config asks for, or None when ``profiler_steps`` is not set."""
    steps = cfg.section(STEPS_KEY)
    start = cfg.section(START_KEY)
    settings = cfg.section(SETTINGS_KEY)
    if steps is None:
        return None
    return ProfileWindow(
        start=start.root if start is not None else 0,
        steps=steps.root,
        settings=settings if settings is not None else ProfilerSettings(),
    )


# --- tables of top operations ------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A numeric column of the top-operations tables: header, table title, value of an event, format."""

    header: str
    title: str  # what a table sorted by this column is "top operations by"
    value: Callable[[Any], float]
    format: Callable[[float], str]


def format_ms(microseconds: float) -> str:
    """Microseconds (as the profiler counts) shown as milliseconds."""
    return f"{microseconds / 1000:.3f}"


def format_bytes(count: float) -> str:
    """A signed byte count in B, KiB, MiB or GiB (self memory is negative when an op frees more)."""
    size = abs(count)
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{int(count)} B"


SELF_CPU = Column("self CPU ms", "self CPU time", lambda event: event.self_cpu_time_total, format_ms)
CPU_TOTAL = Column("CPU total ms", "CPU total time", lambda event: event.cpu_time_total, format_ms)
SELF_CUDA = Column("self CUDA ms", "self CUDA time", lambda event: event.self_device_time_total, format_ms)
CUDA_TOTAL = Column("CUDA total ms", "CUDA total time", lambda event: event.device_time_total, format_ms)
SELF_CPU_MEMORY = Column(
    "self CPU mem", "self CPU memory", lambda event: event.self_cpu_memory_usage, format_bytes
)
SELF_CUDA_MEMORY = Column(
    "self CUDA mem", "self CUDA memory", lambda event: event.self_device_memory_usage, format_bytes
)


def table_columns(on_cuda: bool, profile_memory: bool) -> list[Column]:
    """The numeric columns shown for a run on CPU or CUDA, with or without memory profiling."""
    columns = [SELF_CPU, CPU_TOTAL]
    if on_cuda:
        columns += [SELF_CUDA, CUDA_TOTAL]
    if profile_memory:
        columns.append(SELF_CUDA_MEMORY if on_cuda else SELF_CPU_MEMORY)
    return columns


def sort_columns(on_cuda: bool, profile_memory: bool) -> list[Column]:
    """The columns a table is sorted by, one table each: self time, then memory."""
    columns = [SELF_CPU, SELF_CUDA] if on_cuda else [SELF_CPU]
    if profile_memory:
        columns.append(SELF_CUDA_MEMORY if on_cuda else SELF_CPU_MEMORY)
    return columns


def top_ops_tables(averages: list[Any], on_cuda: bool, settings: ProfilerSettings) -> list[Table]:
    """Rich tables of the operations in ``averages`` (``key_averages()``) with the largest values.

    The step markers (averaged under the key ``ProfilerStep*``) are left out: they are the window's
    structure, not operations.
    """
    ops = [event for event in averages if not str(event.key).startswith(STEP_MARKER_KEY)]
    columns = table_columns(on_cuda, settings.profile_memory)
    tables = []
    for sort_by in sort_columns(on_cuda, settings.profile_memory):
        table = Table(title=f"top operations by {sort_by.title}", title_justify="left")
        table.add_column("operation", overflow="fold")
        table.add_column("calls", justify="right")
        for column in columns:
            table.add_column(column.header, justify="right")
        for event in sorted(ops, key=sort_by.value, reverse=True)[: settings.row_limit]:
            cells = [column.format(column.value(event)) for column in columns]
            table.add_row(str(event.key), str(event.count), *cells)
        tables.append(table)
    return tables


def render_text(renderables: list[Any], width: int = 160) -> str:
    """Plain text of rich renderables, for a file."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False)
    for renderable in renderables:
        console.print(renderable)
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


# --- the callback ------------------------------------------------------------------------------


class StepProfilerCallback(TrainerCallback):
    """Runs ``torch.profiler`` over the optimizer steps of ``window`` and reports what it saw."""

    def __init__(self, window: ProfileWindow, output_dir: str) -> None:
        self.window = window
        self.directory = Path(output_dir) / PROFILER_DIR
        self.profiler: torch.profiler.profile | None = None
        self.step_marker: torch.profiler.record_function | None = None
        self.profiled: list[int] = []  # step numbers (from 1) recorded so far
        self.first_step = 0
        self.on_cuda = False
        self.finished = False

    def on_train_begin(self, args, state, control, **kwargs):
        """Note the step the run starts from (after a resume, not 0) and the device."""
        self.first_step = state.global_step
        self.on_cuda = args.device.type == "cuda"

    def on_step_begin(self, args, state, control, **kwargs):
        """Start the profiler at the window's first step; mark each step of the window in the trace."""
        import torch

        if self.finished or not self.window.start <= state.global_step < self.window.end:
            return
        if self.profiler is None:
            self._start()
        self.step_marker = torch.profiler.record_function(f"{STEP_MARKER}{state.global_step + 1}")
        self.step_marker.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        """Close the step's mark; after the window's last step, stop and report."""
        if self.step_marker is None:
            return
        self.step_marker.__exit__(None, None, None)
        self.step_marker = None
        self.profiled.append(state.global_step)
        if state.global_step >= self.window.end:
            self._finish(args, state, note="")

    def on_train_end(self, args, state, control, **kwargs):
        """Report a window the run cut short, or say in one line that nothing was profiled."""
        if self.profiler is not None and self.profiled:
            self._finish(args, state, note=f" (the run ended after step {self.profiled[-1]})")
            return
        if self.profiler is not None:  # stopped inside the window's first step: nothing whole to show
            self._discard()
        if not self.finished and state.is_world_process_zero:
            self._print(self._nothing_profiled_note(state.global_step))

    def _nothing_profiled_note(self, last_step: int) -> str:
        """One line saying why the window recorded nothing."""
        asked = f"profiler: {self.window.describe()} asked for"
        if self.window.end <= self.first_step:
            return f"{asked}, but this run resumed after step {self.first_step}; nothing was profiled"
        return f"{asked}, but the run's last step is {last_step}; nothing was profiled"

    @property
    def records_memory_history(self) -> bool:
        """Whether the CUDA allocator's history is recorded for a memory snapshot."""
        return self.on_cuda and self.window.settings.profile_memory

    def _start(self) -> None:
        import torch

        settings = self.window.settings
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.on_cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        if self.records_memory_history:
            torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)
        self.profiler = torch.profiler.profile(
            activities=activities,
            record_shapes=settings.record_shapes,
            profile_memory=settings.profile_memory,
            with_stack=settings.with_stack,
        )
        self.profiler.start()

    def _stop(self) -> torch.profiler.profile:
        """Close the open step mark and stop recording (the allocator history too); return the profiler."""
        if self.step_marker is not None:
            self.step_marker.__exit__(None, None, None)
            self.step_marker = None
        profiler, self.profiler = self.profiler, None
        profiler.stop()
        return profiler

    def _discard(self) -> None:
        """Stop recording without writing anything."""
        import torch

        self._stop()
        if self.records_memory_history:
            torch.cuda.memory._record_memory_history(enabled=None)

    def _finish(self, args, state, note: str) -> None:
        """Stop recording, write the trace (and memory snapshot), print and write the top operations."""
        import torch

        profiler = self._stop()
        self.finished = True
        self.directory.mkdir(parents=True, exist_ok=True)
        rank = args.process_index
        trace = self.directory / f"trace_rank{rank}.json"
        profiler.export_chrome_trace(str(trace))
        written = [trace]
        if self.records_memory_history:
            snapshot = self.directory / f"memory_snapshot_rank{rank}.pickle"
            torch.cuda.memory._dump_snapshot(str(snapshot))
            torch.cuda.memory._record_memory_history(enabled=None)
            written.append(snapshot)
        if not state.is_world_process_zero:
            return
        first, last = self.profiled[0], self.profiled[-1]
        steps = f"step {first}" if first == last else f"steps {first}-{last}"
        if (first, last) != (self.window.start + 1, self.window.end):
            steps += f" of {self.window.describe()}"
        summed = "times and memory" if self.window.settings.profile_memory else "times"
        heading = f"profiler: {steps}{note}; {summed} summed over the window"
        tables = top_ops_tables(list(profiler.key_averages()), self.on_cuda, self.window.settings)
        top_ops = self.directory / TOP_OPS_FILE
        top_ops.write_text(render_text([heading, *tables]), encoding="utf-8")
        written.append(top_ops)
        self._print(heading, *tables, "profiler: wrote " + ", ".join(str(path) for path in written))

    @staticmethod
    def _print(*renderables: Any) -> None:
        """Print to stderr (through the progress bar's redirect while one is shown)."""
        console = Console(stderr=True, highlight=False)
        for renderable in renderables:
            console.print(renderable, markup=False, soft_wrap=isinstance(renderable, str))


# --- hooks -------------------------------------------------------------------------------------


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level ``profiler_steps`` and ``profiler_steps_start`` keys and the ``profiler:`` section."""
    register(STEPS_KEY, ProfilerSteps)
    register(START_KEY, ProfilerStepsStart)
    register(SETTINGS_KEY, ProfilerSettings)


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str, ...], str]]:
    """``profiler_steps_start`` or ``profiler:`` without ``profiler_steps`` profiles nothing: say so."""
    if cfg.section(STEPS_KEY) is not None:
        return []
    return [
        ((key,), f"set {STEPS_KEY} to profile (without it nothing is profiled)")
        for key in (START_KEY, SETTINGS_KEY)
        if cfg.section(key) is not None
    ]


@hookimpl
def trainer_callbacks(cfg: FtkConfig) -> list[TrainerCallback]:
    """Contribute the profiling callback when ``profiler_steps`` is set."""
    window = profile_window(cfg)
    return [StepProfilerCallback(window, cfg.output_dir)] if window is not None else []
