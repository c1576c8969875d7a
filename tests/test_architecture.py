"""The boundaries the design rests on, read from the source: who may import whom, and the hook surface."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from ftk.core import hookspecs
from ftk.core.hooks import Hooks
from ftk.core.registry import REGISTRATION_HOOKS

FTK = Path(__file__).resolve().parents[1] / "ftk"


def imported_modules(path: Path, package: str) -> list[str]:
    """Every module ``path`` imports, relative imports resolved against ``package``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]
    return found


def module_package(path: Path) -> str:
    parts = path.relative_to(FTK.parent).with_suffix("").parts
    return ".".join(parts if path.name == "__init__.py" else parts[:-1]).removesuffix(".__init__")


def plugin_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["ftk", "plugins"] else None


def test_no_built_in_plugin_imports_another():
    crossings = []
    for path in sorted((FTK / "plugins").rglob("*.py")):
        own = plugin_of(".".join(path.relative_to(FTK.parent).with_suffix("").parts))
        for module in imported_modules(path, module_package(path)):
            other = plugin_of(module)
            if other is not None and other != own:
                crossings.append(f"{path.relative_to(FTK.parent)} imports {module}")
    assert crossings == []


def test_the_core_imports_no_plugin_command_or_dataset_format():
    outside = ("ftk.plugins", "ftk.commands", "ftk.prompt_strategies", "ftk.cli")
    found = [
        f"{path.relative_to(FTK.parent)} imports {module}"
        for path in sorted((FTK / "core").rglob("*.py"))
        for module in imported_modules(path, module_package(path))
        if module.startswith(outside)
    ]
    assert found == []


def test_the_import_checks_see_a_crossing():
    # The helpers resolve relative imports: "from ..loss import x" inside ftk/plugins/advisor/ is loss.
    package = "ftk.plugins.advisor"
    source = FTK / "plugins" / "advisor" / "__init__.py"
    assert "ftk.plugins.advisor.rules" in imported_modules(source, package)
    assert plugin_of("ftk.plugins.loss.chunked") == "loss" and plugin_of("ftk.core.lm") is None


def specs() -> dict[str, object]:
    return {
        name: function
        for name, function in vars(hookspecs).items()
        if callable(function) and hasattr(function, f"{hookspecs.PROJECT}_spec")
    }


def test_every_hook_is_documented_and_called_through_a_typed_method():
    hooks = specs()
    assert all(inspect.getdoc(function) for function in hooks.values())
    registrations = {name for name in hooks if name.startswith("register_")}
    assert registrations == set(REGISTRATION_HOOKS)
    typed = {name for name, _ in inspect.getmembers(Hooks, inspect.isfunction) if not name.startswith("_")}
    assert typed == set(hooks) - registrations
    for name in typed:  # the typed method takes the hook's arguments, by the same names
        spec_args = list(inspect.signature(hooks[name]).parameters)
        assert list(inspect.signature(getattr(Hooks, name)).parameters)[1:] == spec_args, name
