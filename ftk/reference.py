"""Generate the config and hook references in ``docs/`` from the code itself.

    python -m ftk.reference docs

writes ``docs/config-reference.md`` (every key of the schema, of each registered prompt
strategy's dataset options and of each plugin section: type, default, description) and
``docs/hooks.md`` (every hook in ``ftk/core/hookspecs.py``: kind, signature, docstring).
A test fails when the committed files differ from what this writes.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, RootModel
from pydantic_core import PydanticUndefined

from ftk.core import hookspecs
from ftk.core.config.schema import DatasetConfig, FtkConfig, SpecialTokens
from ftk.core.plugins import FtkPluginManager

CONFIG_REFERENCE = "config-reference.md"
HOOK_REFERENCE = "hooks.md"


def _type_name(annotation: Any) -> str:
    """A short, readable name for a field's type (``path``: ``~`` and ``$VARIABLES`` are expanded)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        validators = {getattr(getattr(item, "func", None), "__name__", "") for item in metadata}
        if "expand_path" in validators:
            return "path"
        if "expand_template_path" in validators:
            return "text or path"
        return _type_name(base)
    if origin is None:
        return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")
    args = ", ".join(_type_name(arg) for arg in get_args(annotation))
    name = getattr(origin, "__name__", str(origin))
    if name in ("Union", "UnionType"):
        return " | ".join(_type_name(arg) for arg in get_args(annotation))
    if name == "Literal":
        return " | ".join(repr(arg) for arg in get_args(annotation))
    return f"{name}[{args}]"


def _field_type_name(field: Any) -> str:
    """The type name of a pydantic field (whose ``Annotated`` metadata pydantic keeps apart)."""
    if field.metadata:
        return _type_name(Annotated[(field.annotation, *field.metadata)])
    return _type_name(field.annotation)


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"
    if field.default is PydanticUndefined:
        return "**required**"
    return f"`{field.default!r}`"


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kind = _field_type_name(field).replace("|", "\\|")
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | {_default(field)} | {description} |")
    return lines


def config_reference(manager: FtkPluginManager) -> str:
    """Markdown for every config key ftk and the loaded plugins understand."""
    registry = manager.collect_registrations()
    out = [
        "# Config reference",
        "",
        "Generated from the pydantic schema by `python -m ftk.reference docs`; do not edit by hand.",
        "Unknown keys are errors everywhere. Keys follow axolotl's names. A value of type `path` may use",
        "`~` and environment variables (`~/runs/a`, `$SCRATCH/data.jsonl`), expanded when the config is",
        "read; a variable that is not set is an error. A relative path is read from the working directory.",
        "",
        "## Top-level keys",
        "",
        *_table(FtkConfig, skip=("datasets", "test_datasets")),
        "",
        "### `special_tokens:`",
        "",
        *_table(SpecialTokens),
        "",
        "### Registered names",
        "",
        "The names these keys accept are registrations of the loaded plugins (a plugin can add more).",
        "",
        "| key | names (plugin) |",
        "| --- | --- |",
        *[
            f"| `{key}` | "
            + ", ".join(
                f"`{name}` ({entry.plugin})" for name, entry in sorted(getattr(registry, table).items())
            )
            + " |"
            for key, table in (
                ("adapter", "adapters"),
                ("optimizer", "optimizers"),
                ("lr_scheduler", "schedulers"),
                ("report_to", "trackers"),
                ("datasets[].type", "strategies"),
            )
        ],
        "",
        "## Dataset entries (`datasets:` and `test_datasets:`)",
        "",
        "Every entry has these keys, plus those of its strategy (`type`).",
        "",
        *_table(DatasetConfig),
    ]
    for name, strategy in sorted(registry.strategies.items()):
        out += ["", f"### `type: {name}`", ""]
        if strategy.options_model is None:
            out.append("No keys of its own.")
        else:
            out += _table(strategy.options_model)
    if registry.sections:
        out += ["", "## Plugin keys"]
        for name, section in sorted(registry.sections.items()):
            owner, model = section.plugin, section.model
            if section.flat:  # top-level keys
                out += ["", f"### Top-level keys of plugin `{owner}`", "", *_table(model)]
            elif issubclass(model, RootModel):  # a top-level value, not a mapping of keys
                kind = _field_type_name(model.model_fields["root"]).replace("|", "\\|")
                about = inspect.getdoc(model) or ""
                out += [
                    "",
                    f"### `{name}` (plugin `{owner}`)",
                    "",
                    f"A value of type {kind}, unset by default. {about}",
                ]
            else:
                out += ["", f"### `{name}:` (plugin `{owner}`)", "", *_table(model)]
    return "\n".join(out) + "\n"


def hook_reference() -> str:
    """Markdown for every hook: kind, signature and docstring, in the order of hookspecs.py."""
    out = [
        "# Hook reference",
        "",
        "Generated from `ftk/core/hookspecs.py` by `python -m ftk.reference docs`; do not edit by hand.",
        "Implement a hook with `@ftk.core.hookspecs.hookimpl` on a function of the same name; take only",
        "the arguments you need. [Writing a plugin](plugins.md) explains the three kinds.",
        "",
    ]
    source = inspect.getsource(hookspecs)
    specs = [
        (name, function)
        for name, function in vars(hookspecs).items()
        if callable(function) and hasattr(function, f"{hookspecs.PROJECT}_spec")
    ]
    specs.sort(key=lambda item: source.index(f"def {item[0]}("))
    for name, function in specs:
        options = getattr(function, f"{hookspecs.PROJECT}_spec")
        if name.startswith("register_"):
            kind = "registration"
        elif options.get("firstresult"):
            kind = "first result wins"
        else:
            kind = "contribution (every implementation is called)"
        signature = str(inspect.signature(function)).replace("'", "")
        out += [f"## `{name}`", "", f"`{name}{signature}`", "", f"*{kind}*. {inspect.getdoc(function)}", ""]
    return "\n".join(out)


def write_references(docs: Path, manager: FtkPluginManager | None = None) -> list[Path]:
    """Write both reference pages into ``docs``; return their paths.

    Without ``manager``, only the built-in plugins are described, so that the committed pages do
    not depend on what else is installed.
    """
    if manager is None:
        manager = FtkPluginManager()
        manager.load_builtins()
    written = []
    for name, text in ((CONFIG_REFERENCE, config_reference(manager)), (HOOK_REFERENCE, hook_reference())):
        path = docs / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_references(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(f"wrote {path}")
