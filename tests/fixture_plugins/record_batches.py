"""A test plugin that records, per process, a fingerprint of every training micro-batch it sees."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ftk.core.hookspecs import hookimpl


@hookimpl
def compute_loss(cfg, model, inputs):
    """Append (rank, example fingerprints) to ``<output_dir>/batches-rank<R>.jsonl``; let the real loss run."""
    if not model.training:
        return None
    rank = int(os.environ.get("RANK", "0"))
    rows = [
        hashlib.sha1(row[mask.bool()].numpy().tobytes()).hexdigest()[:12]
        for row, mask in zip(inputs["input_ids"].cpu(), inputs["attention_mask"].cpu(), strict=True)
    ]
    path = Path(cfg.output_dir) / f"batches-rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps({"rank": rank, "rows": rows}) + "\n")
    return None
