"""Two training processes on CPU (DDP over gloo), started by ``ftk train --nproc-per-node 2``.

They train the small-vocabulary tiny model: each process loads its tokenizer in a fraction of the time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from tests.helpers import first_chat_rows

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_cpu_processes_split_the_data_and_take_the_same_steps(tmp_path, small_vocab_model_dir):
    data = first_chat_rows(tmp_path / "chat.jsonl", 16)
    out = tmp_path / "out"
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"""\
base_model: {small_vocab_model_dir}
datasets:
  - path: {data}
adapter: lora
lora_r: 4
lora_alpha: 8
lora_target_linear: true
sequence_len: 256
excess_length_strategy: truncate
micro_batch_size: 2
max_steps: 3
learning_rate: 3.0e-3
seed: 1
plugins: [tests.fixture_plugins.record_batches]
output_dir: {out}
dataset_prepared_path: {tmp_path / "prepared"}
"""
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-m", "ftk.cli", "train", str(config), "--nproc-per-node", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]

    seen = {}
    for rank in (0, 1):
        lines = (out / f"batches-rank{rank}.jsonl").read_text().splitlines()
        seen[rank] = [json.loads(line)["rows"] for line in lines]
    assert len(seen[0]) == len(seen[1]) == 3  # one micro-batch per step, three steps, on each rank
    rows0 = {row for batch in seen[0] for row in batch}
    rows1 = {row for batch in seen[1] for row in batch}
    assert len(rows0) == len(rows1) == 6 and not rows0 & rows1  # different examples on each rank

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in metrics if "loss" in entry] == [1, 2, 3]
    assert not list(out.glob("checkpoint-*"))  # no save_steps: only the final adapter
    assert (out / "adapter_model.safetensors").is_file()
    assert process.stderr.count("training summary") == 1  # one process speaks for the run

    # num_tokens counts the real tokens of every process: rank 1's rows as well as rank 0's.
    (entry,) = [path for path in (tmp_path / "prepared").iterdir() if not path.name.startswith(".")]
    lengths = row_lengths(entry / "train")
    per_step = [sum(lengths[row] for rank in (0, 1) for row in seen[rank][step]) for step in range(3)]
    expected = [sum(per_step[: step + 1]) for step in range(3)]
    assert [entry["num_tokens"] for entry in metrics if "loss" in entry] == expected
    # Every line once: no second "lora:" line, progress bar or library warning from rank 1.
    lines = [line for line in (process.stdout + process.stderr).splitlines() if line.strip()]
    assert [line for line, count in Counter(lines).items() if count > 1] == []
    assert sum(line.startswith("lora: ") for line in lines) == 1
    assert sum(line.startswith("data: ") for line in lines) == 1


def row_lengths(prepared: Path) -> dict[str, int]:
    """Token count of each prepared row, by the fingerprint tests.fixture_plugins.record_batches gives it."""
    lengths = {}
    for ids in load_from_disk(str(prepared))["input_ids"]:
        lengths[hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:12]] = len(ids)
    return lengths
