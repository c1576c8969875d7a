"""What a run needs to know about the processes it runs in (one, or several under a launcher)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import torch

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
