"""What a run needs to know about the processes it runs in (one, or several under a launcher)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ftk.core.errors import FtkError

#: Variables a distributed launcher (torchrun, accelerate, deepspeed) sets for each process.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def world_size() -> int:
    """Number of training processes of this run (1 unless started by a distributed launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank among the training processes (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Let rank 0 do the work first (e.g. write the data cache) while the others wait, then the rest."""
    import torch

    if world_size() <= 1:
        yield
        return
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        try:
            state.wait_for_everyone()
        except RuntimeError as exc:  # the main process is gone: it has printed why
            raise FtkError(f"process {rank()} stopped: the main process ended while it waited") from exc
    yield
    if state.is_main_process:
        state.wait_for_everyone()


def distributed_arguments() -> dict[str, Any]:
    """TrainingArguments that make several processes one DDP run: on a machine without GPUs, gloo on CPU."""
    import torch

    if world_size() > 1 and not torch.cuda.is_available():
        return {"use_cpu": True, "ddp_backend": "gloo"}
    return {}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_process_group_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables a launcher would set for a run of one process; empty when a launcher started this one.

    DeepSpeed and accelerate's FSDP need a process group even on one GPU; ``ftk train`` without
    ``--nproc-per-node`` starts no launcher.
    """
    if any(name in environ for name in LAUNCHER_VARIABLES):
        return {}
    return {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": environ.get("MASTER_ADDR") or "127.0.0.1",
        "MASTER_PORT": environ.get("MASTER_PORT") or str(_free_port()),
    }


def one_process_note(section: str, processes: int, gpus: int, offloaded: bool) -> str | None:
    """A note for a sharded run of one process: it could use more GPUs, or shards across nothing."""
    if processes != 1:
        return None
    if gpus > 1:
        return (
            f"{section}: one process on a machine with {gpus} GPUs; "
            f"train on all of them with ftk train CONFIG --nproc-per-node {gpus}"
        )
    if not offloaded:
        return f"{section}: one process, so there is nothing to shard across; only CPU offload saves GPU memory here"
    return None


@contextlib.contextmanager
def as_rank_zero_of(processes: int) -> Iterator[None]:
    """Inside, this process looks like rank 0 of ``processes`` launched ones (to check a run before launching it)."""
    seen = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes)}
    saved = {name: os.environ.get(name) for name in seen}
    os.environ.update(seen)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_launcher(argv: Sequence[str]) -> int:
    """Run ``torch.distributed.run`` (``torchrun``) with ``argv``; return the exit code of the first process that failed.

    A process of ``ftk`` that fails has printed why (one ``error:`` line, or its traceback), so
    torchrun's own report of the failure, a traceback of the launcher, is left out.  A process
    killed by a signal gets one line here.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if getattr(sys.flags, "safe_path", False):  # python -P: so do the processes (python -m ftk.cli)
        os.environ["PYTHONSAFEPATH"] = "1"  # the working directory stays off their sys.path
    if "LOGLEVEL" not in os.environ:  # torchrun's loggers take their level from it
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(list(argv)))
    except ChildFailedError as exc:
        first, failure = exc.get_first_failure()
        if failure.exitcode > 0:
            return failure.exitcode
        print(f"error: training process {first} was stopped by {failure.signal_name()}", file=sys.stderr)
        return 1
    except SignalException as exc:
        print(f"interrupted ({exc.sigval.name})", file=sys.stderr)
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":  # python -m ftk.core.launch TORCHRUN_ARGUMENTS
    sys.exit(run_launcher(sys.argv[1:]))
