"""The newcomer docs stay true: their YAML examples validate, and the advisor thresholds they quote are the code's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ftk.core.config.loader import load_config
from ftk.core.errors import FtkError
from ftk.core.plugins import FtkPluginManager
from ftk.plugins.advisor import rules as advisor

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)
# `NAME = value` in backticks, where NAME is an upper-case constant of the advisor's rules module.
QUOTED_CONSTANT = re.compile(r"`([A-Z][A-Z_]+) = ([^`]+)`")
PAGES = ("quickstart.md", "datasets.md", "hyperparameters.md", "troubleshooting.md")


def yaml_blocks() -> list[tuple[str, int, str]]:
    """(page, index, text) of every YAML code block of the newcomer pages."""
    return [
        (page, index, block)
        for page in PAGES
        for index, block in enumerate(YAML_BLOCK.findall((DOCS / page).read_text()))
    ]


def as_full_config(snippet: dict) -> dict:
    """A snippet completed into a whole config: a base model and a dataset where the snippet has none."""
    full = {"base_model": "models/tiny", "datasets": [{"path": "data.jsonl"}]}
    full.update(snippet)
    return full


def builtin_manager() -> FtkPluginManager:
    manager = FtkPluginManager()
    manager.load_builtins()
    return manager


BLOCKS = yaml_blocks()


def test_the_pages_have_yaml_examples():
    pages = {page for page, _, _ in BLOCKS}
    assert pages >= {"quickstart.md", "datasets.md", "hyperparameters.md"}
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize(("page", "index", "block"), BLOCKS, ids=[f"{p}[{i}]" for p, i, _ in BLOCKS])
def test_yaml_example_is_a_valid_config(page, index, block, tmp_path):
    snippet = yaml.safe_load(block)
    assert isinstance(snippet, dict), f"{page} block {index} is not a mapping"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(as_full_config(snippet), sort_keys=False))
    try:
        load_config(path, manager=builtin_manager())
    except FtkError as exc:
        pytest.fail(f"{page} YAML block {index} does not validate: {exc}")


def test_a_misspelled_key_in_an_example_would_be_caught(tmp_path):
    # The check above can fail: the same completion of a snippet with a typo is rejected.
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(as_full_config({"lora_rnak": 16}), sort_keys=False))
    with pytest.raises(FtkError, match="lora_rnak: unknown key"):
        load_config(path, manager=builtin_manager())


def test_quoted_advisor_thresholds_match_the_code():
    text = (DOCS / "hyperparameters.md").read_text()
    quoted = QUOTED_CONSTANT.findall(text)
    names = {name for name, _ in quoted}
    # Every constant a rule compares with is quoted on the page.
    expected = {
        "LORA_LR",
        "FULL_LR",
        "SMALL_MODEL_PARAMS",
        "LORA_SCALE",
        "MIN_EFFECTIVE_BATCH",
        "FEW_ROWS",
        "MANY_EPOCHS",
        "MOE_WARMUP_SHARE",
        "MOE_WARMUP_ENOUGH",
        "MOE_MAX_GRAD_NORM",
        "LONG_SEQUENCE_LEN",
        "OVERSIZED_FACTOR",
        "OVER_LENGTH_SHARE",
        "SPIKE_FACTOR",
        "SPIKE_WINDOW",
        "SPIKE_MIN_HISTORY",
        "SPIKE_FLOOR",
        "LOSS_CHECK_STEP",
        "LOSS_MIN_DROP",
        "OVERFIT_RISE",
        "TRAIN_SMOOTHING",
    }
    assert expected <= names, f"not quoted: {sorted(expected - names)}"
    for name, value in quoted:
        assert eval(value, {}) == getattr(advisor, name), f"docs say {name} = {value}"


def test_rule_names_on_the_page_are_the_advisors():
    text = (DOCS / "hyperparameters.md").read_text()
    mentioned = set(re.findall(r"`([a-z_]+)`", text)) & set(advisor.RULE_NAMES)
    assert mentioned == set(advisor.RULE_NAMES)
