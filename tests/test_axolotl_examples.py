"""A sample of axolotl's own example configs (tests/data/axolotl_examples/, Apache-2.0) validates and
preprocesses in ftk with only the model and data paths swapped for local ones.

The swap is ``bench/axolotl_examples.py``'s (which measures the whole folder): the base model
becomes the bundled tiny model, each Hub dataset a local file in the same row format, output and
cache a scratch folder; every other key is kept as axolotl's authors wrote it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from ftk.cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "axolotl_examples"
CONFIGS = sorted(str(path.relative_to(SAMPLE)) for path in SAMPLE.rglob("*.y*ml"))


def _bench():
    spec = importlib.util.spec_from_file_location("axolotl_examples", REPO / "bench" / "axolotl_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


BENCH = _bench()


def test_the_sample_is_the_documented_one():
    assert len(CONFIGS) == 10 and (SAMPLE / "LICENSE").is_file()


@pytest.mark.parametrize("name", CONFIGS)
def test_axolotl_example_validates_and_preprocesses(name, tmp_path, tiny_model_dir, capsys):
    data = yaml.safe_load((SAMPLE / name).read_text())
    config = BENCH.localize(data, tiny_model_dir, tmp_path, rows=12)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["preprocess", str(path), "--json"]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["train_rows"] > 0
    assert 0 < summary["trained_tokens"] < summary["tokens"]  # prompts are masked in every sample config
