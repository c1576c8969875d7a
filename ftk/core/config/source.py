"""Reading a config: YAML with the line of every key, and ``--key value`` overrides from the CLI.

Every value remembers where it came from (file and line, or the command line), so that an
error can point at it.

A config is read with PyYAML's safe loader (no Python objects), and within fixed bounds: at most
``MAX_DEPTH`` levels of nesting and ``MAX_VALUES`` values once aliases (``*name``) are expanded.
A few hundred bytes of aliases of lists of aliases ("billion laughs") would otherwise expand to
billions of values, and ten thousand ``[`` to a RecursionError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftk.core.errors import FtkError

Loc = tuple[str | int, ...]


@dataclass
class ConfigSource:
    """A config's raw data plus the origin of each key path."""

    path: Path
    data: dict[str, Any]
    lines: dict[Loc, int] = field(default_factory=dict)
    overridden: set[Loc] = field(default_factory=set)
    #: What validation left unchecked because the config's code was not run (``file:line: key: why``).
    notes: list[str] = field(default_factory=list)
    #: The top-level keys set aside unchecked (keys only the config's plugins could define).
    unchecked: dict[str, Any] = field(default_factory=dict)
    #: What ``rewrite_config`` hooks changed, as ``file:line: key: note`` (shown to the user).
    rewrite_notes: list[str] = field(default_factory=list)

    def where(self, loc: Loc) -> str:
        """``file:line`` (or ``command line``) for the key path ``loc`` or its closest known parent."""
        for end in range(len(loc), 0, -1):
            prefix = tuple(loc[:end])
            if prefix in self.overridden:
                return f"{self.path}: command line --{'.'.join(str(p) for p in prefix)}"
            if prefix in self.lines:
                return f"{self.path}:{self.lines[prefix]}"
        return str(self.path)


#: Deepest nesting of mappings and lists a config may have (real configs have fewer than 10).
MAX_DEPTH = 100
#: Most values (keys, items, scalars) a config may hold, counted after expanding aliases.
MAX_VALUES = 100_000


#: The tags of plain mappings and lists; any other (``!!python/object``, ``!!set``...) is refused.
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that stops composing nodes nested deeper than ``MAX_DEPTH``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Builder:
    """Builds Python data from YAML nodes, counting values so that aliases cannot multiply them unbounded."""

    def __init__(self, path: Path, lines: dict[Loc, int]) -> None:
        self.path = path
        self.lines = lines
        self.values = 0
        self.scalars = yaml.constructor.SafeConstructor()

    def count(self, node: yaml.Node) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            raise FtkError(
                f"{self.path}:{node.start_mark.line + 1}: too many values: more than {MAX_VALUES:,} once "
                "aliases (*name) are expanded; a config is far smaller (are aliases nested in aliases?)"
            )

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        """Python data of ``node``, recording the line of each mapping key and list item under ``loc``."""
        self.count(node)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
            raise FtkError(f"{self.path}:{node.start_mark.line + 1}: unsupported YAML tag {node.tag}")
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    kind = "a mapping" if isinstance(key_node, yaml.MappingNode) else "a list"
                    raise FtkError(f"{self.path}:{line}: keys must be strings, got {kind}")
                key = self._scalar(key_node)
                if not isinstance(key, str):
                    raise FtkError(f"{self.path}:{line}: keys must be strings, got {_short(key)}")
                if key in result:
                    first = self.lines.get((*loc, key))
                    raise FtkError(f"{self.path}:{line}: {key}: duplicate key (first set on line {first})")
                self.lines[(*loc, key)] = line
                result[key] = self.build(value_node, (*loc, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.lines[(*loc, index)] = item.start_mark.line + 1
                items.append(self.build(item, (*loc, index)))
            return items
        # Scalars: PyYAML's safe constructor types them (ints, floats, bools, null).
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        """A scalar typed by PyYAML's safe constructor; a tag it does not know is a one-line error."""
        try:
            return self.scalars.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise FtkError(f"{self.path}:{node.start_mark.line + 1}: invalid YAML: {problem}") from None


def _short(value: Any) -> str:
    """``repr`` of a value, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
        node = yaml.compose(text, Loader=_BoundedLoader)
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
    data = _Builder(path, lines).build(node, ())
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
