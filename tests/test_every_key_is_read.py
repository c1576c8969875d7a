"""No accepted key is silently ignored: every key of the schema (core, plugin sections, strategy
options) is read somewhere in ftk's code besides its own declaration.

A static check over the source: a field ``name`` counts as read when ``.name`` or ``"name"``
appears in a module other than as the declaration ``name: type = Field(...)``.  A key that only a
docstring mentions, or that nothing reads, fails here with its name and the model that declares it.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from ftk.core.config.loader import build_config_model
from ftk.core.config.schema import DatasetConfig
from ftk.core.plugins import FtkPluginManager

FTK = Path(__file__).resolve().parents[1] / "ftk"


def _code_without_declarations() -> str:
    """All of ftk's Python source, with field declaration lines and docstring-only lines removed."""
    declaration = re.compile(r"^\s+\w+\s*:\s*[^=]+=\s*Field\(|^\s+\w+\s*:\s*[\w\[\]|., \"']+\s*=\s*[^=]")
    lines = []
    for path in sorted(FTK.rglob("*.py")):
        for line in path.read_text().splitlines():
            if not declaration.match(line):
                lines.append(line)
    return "\n".join(lines)


def _models() -> list[tuple[str, type[BaseModel]]]:
    manager = FtkPluginManager()  # the built-in plugins only: installed ones are checked by their authors
    manager.load_builtins()
    registry = manager.collect_registrations()
    found: list[tuple[str, type[BaseModel]]] = [("config", build_config_model(registry.sections))]
    found.append(("dataset entry", DatasetConfig))
    for name, strategy in registry.strategies.items():
        if strategy.options_model is not None:
            found.append((f"strategy {name}", strategy.options_model))
    for section in registry.sections.values():
        found.append((f"section {section.name}", section.model))
    return found


def test_every_accepted_key_has_a_reader():
    code = _code_without_declarations()
    unread = []
    for owner, model in _models():
        for name in model.model_fields:
            if not re.search(rf"\.{name}\b|[\"']{name}[\"']", code):
                unread.append(f"{owner}: {name}")
    assert not unread, "keys nothing reads (implement them or remove them):\n" + "\n".join(
        sorted(set(unread))
    )
