"""Several training processes on one machine: ``ftk train cfg.yaml --nproc-per-node N``.

ftk re-runs itself under ``torch.distributed.run`` (what the ``torchrun`` command runs), one
process per device; Trainer then trains with DistributedDataParallel (NCCL on GPUs, gloo on
CPU).  ``torchrun -m ftk.cli train cfg.yaml`` and ``accelerate launch -m ftk.cli train
cfg.yaml`` start the same processes from outside.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ftk.core.errors import FtkError


def world_size() -> int:
    """Number of training processes of this run (1 unless started by a distributed launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank among the training processes (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


def launcher_command(nproc_per_node: int, ftk_args: Sequence[str]) -> list[str]:
    """The command that runs ``ftk <ftk_args>`` in ``nproc_per_node`` processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        "ftk.cli",
        *ftk_args,
    ]


def launch(nproc_per_node: int, ftk_args: Sequence[str]) -> int:
    """Run ftk in ``nproc_per_node`` processes and return the launcher's exit code."""
    if nproc_per_node < 1:
        raise FtkError(f"--nproc-per-node: must be at least 1, not {nproc_per_node}")
    if world_size() > 1:
        raise FtkError("--nproc-per-node: this process was already started by a distributed launcher")
    return subprocess.call(launcher_command(nproc_per_node, ftk_args))


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Let rank 0 do the work first (e.g. write the data cache) while the others wait, then the rest."""
    if world_size() <= 1:
        yield
        return
    from accelerate import PartialState

    with PartialState(cpu=not torch.cuda.is_available()).main_process_first():
        yield


def distributed_arguments() -> dict[str, Any]:
    """TrainingArguments that make several processes one DDP run: on a machine without GPUs, gloo on CPU."""
    if world_size() > 1 and not torch.cuda.is_available():
        return {"use_cpu": True, "ddp_backend": "gloo"}
    return {}
