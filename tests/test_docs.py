"""The docs stay true: generated references match the code, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftk.core.plugins import FtkPluginManager
from ftk.reference import (
    AXOLOTL_PAGE,
    CONFIG_REFERENCE,
    HOOK_REFERENCE,
    axolotl_page,
    config_reference,
    hook_reference,
)

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def builtin_manager() -> FtkPluginManager:
    manager = FtkPluginManager()
    manager.load_builtins()
    return manager


def test_config_reference_is_up_to_date():
    committed = (REPO / "docs" / CONFIG_REFERENCE).read_text()
    assert committed == config_reference(builtin_manager()), "run: python -m ftk.reference docs"


def test_axolotl_key_table_is_up_to_date():
    page = (REPO / "docs" / AXOLOTL_PAGE).read_text()
    assert page == axolotl_page(page, builtin_manager()), "run: python -m ftk.reference docs"


def test_hook_reference_is_up_to_date():
    assert (REPO / "docs" / HOOK_REFERENCE).read_text() == hook_reference(), (
        "run: python -m ftk.reference docs"
    )


def test_config_reference_lists_every_key_and_strategy_option():
    text = (REPO / "docs" / CONFIG_REFERENCE).read_text()
    for key in (
        "base_model",
        "lora_r",
        "sample_packing",
        "excess_length_strategy",
        "field_messages",
        "eot_tokens",
    ):
        assert f"| `{key}` |" in text, key
    for strategy in ("chat_template", "alpaca", "completion", "input_output"):
        assert f"### `type: {strategy}`" in text


MARKDOWN = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "examples").rglob("*.md")])


@pytest.mark.parametrize("page", MARKDOWN, ids=[str(p.relative_to(REPO)) for p in MARKDOWN])
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to missing {target}"
