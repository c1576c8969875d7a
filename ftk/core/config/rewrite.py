"""Rewriting a config's raw data before it is validated: another trainer's vocabulary into ftk's.

A plugin that implements the ``rewrite_config`` hook receives a :class:`ConfigRewrite`.  It may
rename a key (the line of the old key is kept for error messages), set or drop one, each with a
one-line note for the user; report a problem (shown with every other problem of the config); or
leave a decision until the full schema is known: a key the plugin recognises but ftk does not
define is **ignored** (with a note) or **explained** (its "unknown key" error gets the plugin's
message instead of a guess at a neighbouring key) only if, once the config's own plugins are
loaded, no plugin defines it.  That way a third-party plugin that implements such a key wins.

The hook runs before the modules of the config's ``plugins:`` list are imported, so a rewrite
may also change that list (e.g. replace another trainer's plugin path with ftk's built-in).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any

from ftk.core.config.source import ConfigSource, Loc

#: A value a rewrite leaves unchanged (``ConfigRewrite.rename`` without ``value``).
_KEEP = object()


@dataclass
class ConfigRewrite:
    """The raw config data of ``source`` and what rewrites did to it (see the module docstring)."""

    source: ConfigSource
    #: Top-level keys defined by the plugins loaded so far (built-ins and installed ones).
    known_keys: frozenset[str] = frozenset()
    notes: list[tuple[Loc, str]] = field(default_factory=list)
    problems: list[tuple[Loc, str]] = field(default_factory=list)
    #: Keys to drop, with a note, if no plugin defines them after all.
    ignored_if_unknown: dict[Loc, str] = field(default_factory=dict)
    #: Keys whose "unknown key" error says this instead, if no plugin defines them.
    explained_if_unknown: dict[Loc, str] = field(default_factory=dict)
    #: Indices of ``plugins:`` entries a rewrite took care of: not imported, removed from the list.
    handled_plugins: builtins.set[int] = field(default_factory=set)

    @property
    def data(self) -> dict[str, Any]:
        """The config's top-level mapping (changed in place by the methods below)."""
        return self.source.data

    def container(self, loc: Loc) -> Any:
        """The mapping or list at ``loc`` (``()``: the top level)."""
        node: Any = self.source.data
        for part in loc:
            node = node[part]
        return node

    def note(self, loc: Loc, message: str) -> None:
        """A one-line note for the user about the key at ``loc``."""
        self.notes.append((tuple(loc), message))

    def problem(self, loc: Loc, message: str) -> None:
        """An error about the key at ``loc``, reported together with the config's other problems."""
        self.problems.append((tuple(loc), message))

    def rename(self, loc: Loc, new: str, value: Any = _KEEP, note: str | None = None) -> None:
        """Move the key at ``loc`` to ``new`` in the same mapping (optionally with a new value).

        When ``new`` is also set, that is a problem naming both keys and nothing changes.
        """
        *parent, old = loc
        holder = self.container(tuple(parent))
        if new in holder:
            self.problem(loc, f"sets what {new!r} also sets; keep one of them")
            return
        moved = holder.pop(old)
        holder[new] = moved if value is _KEEP else value
        self._move_lines(tuple(loc), (*parent, new))
        if note:
            self.note((*parent, new), note)

    def set(self, loc: Loc, value: Any, note: str | None = None, line_of: Loc | None = None) -> None:
        """Set the key at ``loc``; ``line_of`` is the key whose line errors about it should show."""
        *parent, key = loc
        self.container(tuple(parent))[key] = value
        if line_of is not None and tuple(line_of) in self.source.lines:
            self.source.lines.setdefault(tuple(loc), self.source.lines[tuple(line_of)])
        if note:
            self.note(loc, note)

    def drop(self, loc: Loc, note: str | None = None) -> None:
        """Remove the key at ``loc``."""
        *parent, key = loc
        del self.container(tuple(parent))[key]
        if note:
            self.note(loc, note)

    def handle_plugin(self, index: int, note: str | None = None) -> None:
        """The ``plugins:`` entry at ``index`` is taken care of (mapped or reported): do not import it."""
        self.handled_plugins.add(index)
        if note:
            self.note(("plugins", index), note)

    def unhandled_plugins(self) -> list[Any]:
        """The config's ``plugins:`` list without the entries a rewrite handled (written back)."""
        plugins = self.source.data.get("plugins") or []
        if self.handled_plugins and isinstance(plugins, list):
            plugins = [name for index, name in enumerate(plugins) if index not in self.handled_plugins]
            self.source.data["plugins"] = plugins
        return plugins

    def ignore_if_unknown(self, loc: Loc, note: str = "") -> None:
        """Drop the key at ``loc`` (noting ``note``, if any) unless a plugin turns out to define it."""
        self.ignored_if_unknown[tuple(loc)] = note

    def explain_if_unknown(self, loc: Loc, message: str) -> None:
        """Give the key at ``loc`` this error message, unless a plugin turns out to define it."""
        self.explained_if_unknown[tuple(loc)] = message

    def _move_lines(self, old: Loc, new: Loc) -> None:
        """Errors about keys under ``new`` point at the lines where ``old`` was written."""
        size = len(old)
        for loc, line in list(self.source.lines.items()):
            if loc[:size] == old:
                self.source.lines[(*new, *loc[size:])] = line
        if old in self.source.overridden:
            self.source.overridden.add(new)

    def settle(
        self, known: builtins.set[str], dataset_known: dict[tuple[str, int], builtins.set[str]] | None = None
    ) -> None:
        """Apply the deferred decisions now that the schema is known: drop ignored keys no plugin
        defines (their notes join :attr:`notes`); explanations stay for the error messages."""
        for loc, note in self.ignored_if_unknown.items():
            if not self._is_known(loc, known, dataset_known):
                try:
                    self.drop(loc, note or None)
                except (KeyError, IndexError, TypeError):
                    continue
        for loc in list(self.explained_if_unknown):
            if self._is_known(loc, known, dataset_known):
                del self.explained_if_unknown[loc]

    @staticmethod
    def _is_known(
        loc: Loc, known: builtins.set[str], dataset_known: dict[tuple[str, int], builtins.set[str]] | None
    ) -> bool:
        if len(loc) == 1:
            return loc[0] in known
        if len(loc) == 3 and isinstance(loc[1], int) and dataset_known is not None:
            return loc[2] in dataset_known.get((str(loc[0]), loc[1]), set())
        return False

    def note_lines(self) -> list[str]:
        """The notes as ``file:line: key: note``."""
        from ftk.core.errors import format_loc

        return [f"{self.source.where(loc)}: {format_loc(loc)}: {message}" for loc, message in self.notes]
