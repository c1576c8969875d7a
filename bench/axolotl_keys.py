"""Generate the table of every key axolotl's config schema accepts, from axolotl's own source.

Reads a git mirror of axolotl (``fetch github:axolotl-ai-cloud/axolotl`` gives one) at a commit,
parses the pydantic models of ``src/axolotl/utils/schemas/`` and of each integration's
``args.py`` with ``ast`` (nothing of axolotl is imported or run), and writes, for each top-level
key and each dataset-entry key, its default value when the default is a literal (else the text
``<computed>``) and the class that declares it.  The result is
``ftk/plugins/axolotl_compat/axolotl_keys.json``, which ftk's axolotl-compatibility plugin reads
to tell a key axolotl has (and ftk treats: maps, ignores as a no-op, or rejects with a reason)
from a misspelling.

    python bench/axolotl_keys.py /work/.mirror/axolotl-ai-cloud+axolotl/repo [--commit HEAD]
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "ftk" / "plugins" / "axolotl_compat" / "axolotl_keys.json"
SCHEMAS = "src/axolotl/utils/schemas/"
INTEGRATIONS = "src/axolotl/integrations/"
TOP_CLASS = "AxolotlInputConfig"
DATASET_CLASSES = ("SFTDataset", "PretrainingDataset", "UserDefinedPrompterType")
COMPUTED = "<computed>"


def git(mirror: Path, *args: str) -> str:
    """Output of a git command in the mirror."""
    return subprocess.run(
        ["git", "-C", str(mirror), *args], check=True, capture_output=True, text=True
    ).stdout


def _default(value: ast.expr | None) -> Any:
    """The literal default of a field (``Field(default=...)`` or a plain value), or COMPUTED."""
    if value is None:
        return None
    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Field":
        for keyword in value.keywords:
            if keyword.arg == "default":
                return _default(keyword.value)
            if keyword.arg == "default_factory":
                return COMPUTED
        return _default(value.args[0]) if value.args else None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return COMPUTED


def _alias(value: ast.expr | None) -> str | None:
    """The key a field is written as in a config: its ``Field(alias=...)``, if any."""
    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Field":
        for keyword in value.keywords:
            if keyword.arg == "alias" and isinstance(keyword.value, ast.Constant):
                return str(keyword.value.value)
    return None


def classes_of(source: str, where: str) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """Each class of a module: (base class names, {field: default})."""
    found: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [getattr(base, "id", getattr(base, "attr", "")) for base in node.bases]
        fields = {}
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                names = {item.target.id, _alias(item.value) or item.target.id}
                for name in names - {"model_config"}:
                    if not name.startswith("_"):
                        fields[name] = {
                            "default": _default(item.value),
                            "declared_in": f"{where}:{node.name}",
                        }
        found[node.name] = (bases, fields)
    return found


def collect(mirror: Path, commit: str) -> dict[str, Any]:
    """The key table of axolotl at ``commit``: top-level keys, dataset keys, plugin keys."""
    files = git(mirror, "ls-tree", "-r", "--name-only", commit, SCHEMAS, INTEGRATIONS).split()
    classes: dict[str, tuple[list[str], dict[str, Any]]] = {}
    plugin_fields: dict[str, Any] = {}
    for path in files:
        if not path.endswith(".py"):
            continue
        short = path.removeprefix("src/axolotl/")
        found = classes_of(git(mirror, "show", f"{commit}:{path}"), short)
        if path.startswith(SCHEMAS):
            classes.update(found)
        elif path.endswith("/args.py"):
            for _, fields in found.values():
                plugin_fields.update(fields)

    def closure(name: str, seen: set[str]) -> dict[str, Any]:
        if name not in classes or name in seen:
            return {}
        seen.add(name)
        bases, fields = classes[name]
        merged: dict[str, Any] = {}
        for base in reversed(bases):
            merged.update(closure(base, seen))
        merged.update(fields)
        return merged

    top = closure(TOP_CLASS, set())
    dataset: dict[str, Any] = {}
    for name in DATASET_CLASSES:
        dataset.update(closure(name, set()))
    plugin_only = {key: value for key, value in plugin_fields.items() if key not in top}
    return {
        "commit": git(mirror, "rev-parse", commit).strip(),
        "top_level": dict(sorted(top.items())),
        "plugin_keys": dict(sorted(plugin_only.items())),
        "dataset": dict(sorted(dataset.items())),
    }


def main() -> None:
    """Write the key table of the mirror's commit to ``OUT`` and print its counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mirror", type=Path, help="git directory of an axolotl mirror")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    table = collect(args.mirror, args.commit)
    args.out.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    counts = {key: len(value) for key, value in table.items() if isinstance(value, dict)}
    print(f"axolotl {table['commit'][:10]}: {counts} -> {args.out}")


if __name__ == "__main__":
    main()
