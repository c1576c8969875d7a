"""Reading a config: YAML with the line of every key, and ``--key value`` overrides from the CLI.

Every value remembers where it came from (file and line, or the command line), so that an
error can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftk.core.errors import FtkError

Loc = tuple[str | int, ...]

_SCALARS = yaml.constructor.SafeConstructor()


@dataclass
class ConfigSource:
    """A config's raw data plus the origin of each key path."""

    path: Path
    data: dict[str, Any]
    lines: dict[Loc, int] = field(default_factory=dict)
    overridden: set[Loc] = field(default_factory=set)

    def where(self, loc: Loc) -> str:
        """``file:line`` (or ``command line``) for the key path ``loc`` or its closest known parent."""
        for end in range(len(loc), 0, -1):
            prefix = tuple(loc[:end])
            if prefix in self.overridden:
                return f"{self.path}: command line --{'.'.join(str(p) for p in prefix)}"
            if prefix in self.lines:
                return f"{self.path}:{self.lines[prefix]}"
        return str(self.path)


def _construct(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: Path) -> Any:
    """Build Python data from a YAML node, recording the line of each mapping key and list item."""
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _SCALARS.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise FtkError(f"{path}:{line}: keys must be strings, got {key!r}")
            if key in result:
                first = lines.get((*loc, key))
                raise FtkError(f"{path}:{line}: {key}: duplicate key (first set on line {first})")
            lines[(*loc, key)] = line
            result[key] = _construct(value_node, (*loc, key), lines, path)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            items.append(_construct(item, (*loc, index), lines, path))
        return items
    # Scalars: PyYAML's safe constructor types them (ints, floats, bools, null).
    return _SCALARS.construct_object(node, deep=True)


def read_config_file(path: str | Path) -> ConfigSource:
    """Read a YAML config safely, keeping the line of every key; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FtkError(f"{path}: config file not found") from None
    except OSError as exc:
        raise FtkError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise FtkError(f"{where}: invalid YAML: {problem}") from None
    if node is None:
        raise FtkError(f"{path}: the config is empty")
    if not isinstance(node, yaml.MappingNode):
        raise FtkError(f"{path}:{node.start_mark.line + 1}: the config must be a mapping of keys to values")
    lines: dict[Loc, int] = {}
    data = _construct(node, (), lines, path)
    return ConfigSource(path=path, data=data, lines=lines)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ``["--learning_rate", "3e-4", "--bf16=true"]`` into ``{"learning_rate": 3e-4, "bf16": True}``.

    Values are parsed as YAML scalars (so ``null``, ``true``, ``[a, b]`` work); a dotted key such as
    ``--section.key`` sets a key inside a section.
    """
    overrides: dict[str, Any] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("--") or arg == "--":
            raise FtkError(f"command line: unexpected argument {arg!r}; overrides look like --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if index + 1 >= len(args) or args[index + 1].startswith("--"):
                raise FtkError(f"command line: --{key} needs a value")
            value = args[index + 1]
            index += 1
        index += 1
        key = key.replace("-", "_")
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str):
            parsed = _number_or_text(parsed)
        overrides[key] = parsed
    return overrides


def _number_or_text(text: str) -> Any:
    """YAML 1.1 reads ``3e-4`` as text; on the command line a person means the number."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def apply_overrides(source: ConfigSource, overrides: dict[str, Any]) -> None:
    """Set each override in ``source.data`` and remember it came from the command line."""
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        target = source.data
        for depth, part in enumerate(parts[:-1]):
            existing = target.get(part)
            if existing is None:
                existing = target[part] = {}
            if not isinstance(existing, dict):
                joined = ".".join(parts[: depth + 1])
                raise FtkError(f"command line: --{dotted}: {joined} is not a section")
            target = existing
        target[parts[-1]] = value
        source.overridden.add(tuple(parts))
