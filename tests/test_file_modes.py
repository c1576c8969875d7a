"""Every file and folder a run writes follows the user's umask, whatever library writes it.

safetensors writes its file private (0600) and renames it into place; ftk publishes saved weights
(the final model or adapter, each checkpoint, a merged model) from a staging folder, and gives
every file there the permissions a plain ``open`` would have given it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftk.cli import main
from ftk.core.files import publish_directory, publish_files, staging_directory
from tests.helpers import SMALL_LORA, first_chat_rows, write_config


def wrong_modes(root: Path, umask: int) -> list[str]:
    """``mode path`` for each file or folder under ``root`` whose mode is not what the umask gives."""
    wrong = []
    for folder, folders, files in os.walk(root):
        for name in [*folders, *files]:
            path = Path(folder) / name
            mode = path.stat().st_mode & 0o777
            if mode != (0o777 if path.is_dir() else 0o666) & ~umask:
                wrong.append(f"{oct(mode)} {path.relative_to(root)}")
    return wrong


@pytest.fixture
def umask(request):
    """Run the test under the umask ``request.param``; the previous one is restored after."""
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("umask", "adapter"), [(0o022, {}), (0o002, SMALL_LORA)], indirect=["umask"], ids=["022-full", "002-lora"]
)
def test_every_file_of_a_run_follows_the_umask(tmp_path, tiny_model_dir, umask, adapter):
    """One step, profiled, logged, saved as a checkpoint and reported: the weights (full model or
    adapter), checkpoint, config, stats, metrics, profiler output, summary, plot and data cache."""
    data = first_chat_rows(tmp_path / "chat.jsonl", 4)
    keys = dict(
        sequence_len=128,
        max_steps=1,
        save_steps=1,
        logging_steps=1,
        profiler_steps=1,
        excess_length_strategy="truncate",
    )
    cfg = write_config(tmp_path, tiny_model_dir, data, **{**keys, **adapter})
    assert main(["train", str(cfg)]) == 0
    out = tmp_path / "out"
    weights = "adapter_model.safetensors" if adapter else "model.safetensors"
    for name in (weights, f"checkpoint-1/{weights}", "ftk_config.yaml", "data_stats.json"):
        assert (out / name).exists(), name
    for name in (
        "metrics.jsonl",
        "summary.md",
        "loss.png",
        "profiler/top_ops.txt",
        "profiler/trace_rank0.json",
    ):
        assert (out / name).is_file(), name
    assert wrong_modes(out, umask) == []
    assert wrong_modes(tmp_path / "prepared", umask) == []


@pytest.mark.parametrize("umask", [0o022, 0o002], indirect=True, ids=["022", "002"])
def test_published_folders_and_files_follow_the_umask(tmp_path, umask):
    """A file a library wrote private (as safetensors does) is published with the umask's mode."""
    final = tmp_path / "model"
    staged = staging_directory(final)
    (staged / "sub").mkdir()
    for name in ("weights.safetensors", "sub/shard.bin"):
        (staged / name).write_bytes(b"x")
        (staged / name).chmod(0o600)
    (staged / "sub").chmod(0o700)
    publish_directory(staged, final)
    assert wrong_modes(final, umask) == []

    into = tmp_path / "run"
    staged = staging_directory(into / "save")
    (staged / "adapter.safetensors").write_bytes(b"x")
    (staged / "adapter.safetensors").chmod(0o600)
    publish_files(staged, into)
    assert wrong_modes(into, umask) == []
