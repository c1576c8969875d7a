"""Load and validate a config: YAML + overrides -> plugins -> schema (+ plugin sections) -> FtkConfig.

Every problem is reported as ``file:line: key.path: what is wrong (did you mean ...?)``, all of
them at once, as one ``FtkError``.

``run_config_code=False`` (``ftk validate``, ``ftk plugins CONFIG``) checks the code the config
names (``plugins:``, a dataset's ``type: pkg.module.function``) from its source without running
it.  What only that code could tell (the keys and names a config plugin registers, the options a
strategy function takes) is then not checked: ``source.notes`` says so, key by key.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError, create_model

from ftk.core.config.rewrite import ConfigRewrite
from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.config.source import ConfigSource, Loc, apply_overrides, parse_overrides, read_config_file
from ftk.core.config.strategies import check_strategy_source, resolve_strategy
from ftk.core.errors import FtkError, format_loc, suggest
from ftk.core.plugins import FtkPluginManager, create_plugin_manager
from ftk.core.registry import Registry, Section

DATASET_LIST_KEYS = ("datasets", "test_datasets")


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that holds the keys at ``loc`` (walking fields, lists and optionals)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(part)
        if info is None:
            return None
        current = _unwrap(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """The BaseModel inside ``list[M]``, ``M | None`` and the like, else the annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _unwrap(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation if get_origin(annotation) is None else None


class ConfigErrors:
    """Collects problems with their key paths and renders them against the config source."""

    def __init__(self, source: ConfigSource, explained: dict[Loc, str] | None = None) -> None:
        self.source = source
        self.problems: list[tuple[Loc, str]] = []
        #: Messages for keys a rewrite recognised but no plugin defines (instead of "unknown key").
        self.explained = explained or {}

    def add(self, loc: Loc, message: str) -> None:
        self.problems.append((tuple(loc), message))

    def add_validation_error(
        self,
        error: ValidationError,
        root: type[BaseModel],
        prefix: Loc = (),
        extra_candidates: list[str] | None = None,
    ) -> None:
        """Translate pydantic's errors, adding did-you-mean hints for unknown keys."""
        reported = {loc for loc, _ in self.problems}
        for item in error.errors():
            loc = (*prefix, *item["loc"])
            if loc in reported:  # one problem per key: the first found says what is wrong
                continue
            kind = item["type"]
            if kind == "extra_forbidden":
                if loc in self.explained:
                    self.add(loc, self.explained[loc])
                    continue
                holder = _model_at(root, item["loc"][:-1])
                candidates = list(holder.model_fields) if holder is not None else []
                candidates += extra_candidates or []
                self.add(loc, "unknown key" + suggest(str(loc[-1]), candidates))
            elif kind == "missing":
                self.add(loc, "required key is missing")
            else:
                given = item.get("input")
                shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
                self.add(loc, f"{item['msg']}{shown}")

    def _line_of(self, loc: Loc) -> int:
        for end in range(len(loc), 0, -1):
            if tuple(loc[:end]) in self.source.lines:
                return self.source.lines[tuple(loc[:end])]
        return 0

    def lines(self) -> list[str]:
        """The problems as ``file:line: key: message``, in the order of the file."""
        lines = []
        for loc, message in sorted(self.problems, key=lambda item: self._line_of(item[0])):
            where = self.source.where(loc) if loc else str(self.source.path)
            key = format_loc(loc)
            lines.append(f"{where}: {key}: {message}" if loc else f"{where}: {message}")
        return lines

    def raise_if_any(self) -> None:
        if self.problems:
            raise FtkError("\n".join(self.lines()))


def _is_number(annotation: Any) -> bool:
    """Whether a field of this type takes a number and not a boolean (``int``, ``float | None``)."""
    types = set(get_args(annotation)) or {annotation}
    return bool(types & {int, float}) and bool not in types


def _numbers_given_as_booleans(data: Any, model: type[BaseModel], prefix: Loc = ()) -> list[tuple[Loc, str]]:
    """Number keys set to true or false, which pydantic would read as 1 and 0 (``sequence_len: true``)."""
    problems: list[tuple[Loc, str]] = []
    if not isinstance(data, dict):
        return problems
    for key, value in data.items():
        info = model.model_fields.get(key)
        if info is None:
            continue
        if isinstance(value, bool) and _is_number(info.annotation):
            problems.append(((*prefix, key), f"must be a number, not {str(value).lower()}"))
        inner = _unwrap(info.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            items = enumerate(value) if isinstance(value, list) else [(None, value)]
            for index, item in items:
                where = (*prefix, key) if index is None else (*prefix, key, index)
                problems += _numbers_given_as_booleans(item, inner, where)
    return problems


def build_config_model(sections: dict[str, Section]) -> type[FtkConfig]:
    """FtkConfig extended with the plugins' keys: one optional field per section, the fields of flat ones.

    The same sections give the same class, and its instances pickle as (sections, field values),
    so a config crosses to a worker process (``dataset_processes``) and is rebuilt there.
    """
    if not sections:
        return FtkConfig
    return _config_model(tuple(sections.values()))


def _restore_config(sections: tuple[Section, ...], state: dict[str, Any]) -> FtkConfig:
    """Unpickle a config of a class built from ``sections`` (see ``build_config_model``)."""
    model = _config_model(sections)
    cfg = model.__new__(model)
    cfg.__setstate__(state)
    return cfg


def _reduce_config(cfg: FtkConfig) -> tuple[Any, ...]:
    return _restore_config, (type(cfg).__ftk_sections__, cfg.__getstate__())  # type: ignore[attr-defined]


@lru_cache(maxsize=16)
def _config_model(sections: tuple[Section, ...]) -> type[FtkConfig]:
    fields: dict[str, Any] = {}
    owners = {name: "ftk" for name in FtkConfig.model_fields}
    flat: dict[str, type[BaseModel]] = {}
    for section in sections:
        added: dict[str, Any]
        if section.flat:
            _check_flat(section)
            flat[section.name] = section.model
            added = {key: (info.annotation, info) for key, info in section.model.model_fields.items()}
        else:
            added = {section.name: (section.model | None, None)}
        for key in added:
            if key in owners:
                owner = "a built-in key" if owners[key] == "ftk" else f"a key of plugin {owners[key]!r}"
                raise FtkError(f"plugin {section.plugin!r}: config key {key!r} is already {owner}")
            owners[key] = section.plugin
        fields.update(added)
    model = create_model("FtkConfigWithSections", __base__=FtkConfig, **fields)
    model.flat_sections = flat
    model.__ftk_sections__ = sections  # type: ignore[attr-defined]
    model.__reduce__ = _reduce_config  # type: ignore[assignment,method-assign]
    return model


def _check_flat(section: Section) -> None:
    """Flat sections validate through their field types: decorator validators would not carry over."""
    decorators = section.model.__pydantic_decorators__
    if decorators.field_validators or decorators.model_validators:
        raise FtkError(
            f"plugin {section.plugin!r}: flat config section {section.name!r} has validator methods; "
            "put field checks in the field types (Annotated[..., AfterValidator(...)]) and checks "
            "across keys in config_problems"
        )


#: Top-level keys that choose a registered name, and the registry table the name must be in.
NAMED_CHOICES = {"adapter": "adapters", "optimizer": "optimizers", "lr_scheduler": "schedulers"}


def _choice_problems(cfg: FtkConfig, registry: Registry) -> list[tuple[Loc, str]]:
    """``adapter``, ``optimizer``, ``lr_scheduler`` and ``report_to`` names nobody registered."""
    chosen: list[tuple[Loc, str, str | None]] = [
        ((key,), table, getattr(cfg, key)) for key, table in NAMED_CHOICES.items()
    ]
    chosen += [(("report_to", index), "trackers", name) for index, name in enumerate(cfg.report_to)]
    problems = []
    for loc, table, name in chosen:
        if name is None:
            continue
        try:
            registry.lookup(table, name)
        except FtkError as exc:
            problems.append((loc, str(exc)))
    return problems


def _not_run(plugins: list[str]) -> str:
    """Why something was not checked: the code that would tell was not run (``ftk validate``)."""
    if plugins:
        return f"not imported: {', '.join(plugins)}; --import checks it"
    return "ftk validate runs none of the config's code; --import checks them"


def _maybe_registered(message: str, plugins: list[str], what: str = "register") -> str:
    """``message`` as a note: one of the config's plugins, not imported, may ``what`` the name."""
    return f"{message}; not checked: one of the config's plugins may {what} it ({_not_run(plugins)})"


def _validate_dataset_options(
    raw_datasets: Any,
    registry: Registry,
    errors: ConfigErrors,
    key: str,
    notes: ConfigErrors | None = None,
    unimported: list[str] | None = None,
) -> dict[int, BaseModel]:
    """Check each dataset's strategy-specific keys against that strategy's options model.

    Works on the raw data, so these problems are reported together with the others.  With
    ``notes`` (the config's code is not run), a dotted ``type`` is checked from its source and
    what only running it could tell goes to ``notes``, as does a name that one of the
    ``unimported`` plugins may register.
    """
    options_by_index: dict[int, BaseModel] = {}
    if not isinstance(raw_datasets, list):
        return options_by_index
    common = list(DatasetConfig.model_fields)
    for index, raw in enumerate(raw_datasets):
        if not isinstance(raw, dict):
            continue
        loc: Loc = (key, index)
        type_name = str(raw.get("type", DatasetConfig.model_fields["type"].default))
        extras = {key: value for key, value in raw.items() if key not in common}
        if notes is not None and type_name not in registry.strategies:
            _check_unimported_strategy(type_name, extras, loc, registry, errors, notes, unimported or [])
            continue
        try:
            strategy = resolve_strategy(registry, type_name)
        except FtkError as exc:
            errors.add((*loc, "type"), str(exc))
            continue
        if strategy.options_model is None:
            for key in extras:
                message = f"unknown key for strategy {type_name!r}" + suggest(key, common)
                errors.add((*loc, key), errors.explained.get((*loc, key), message))
            continue
        try:
            options_by_index[index] = strategy.options_model.model_validate(extras)
        except ValidationError as exc:
            # An unknown key may be a common dataset key misspelled: suggest from both sets.
            errors.add_validation_error(exc, strategy.options_model, prefix=loc, extra_candidates=common)
    return options_by_index


def _check_unimported_strategy(
    type_name: str,
    extras: dict[str, Any],
    loc: Loc,
    registry: Registry,
    errors: ConfigErrors,
    notes: ConfigErrors,
    unimported: list[str],
) -> None:
    """A ``type`` that is not a registered name, checked without running any of the config's code."""
    common = list(DatasetConfig.model_fields)
    try:
        if "." not in type_name:
            resolve_strategy(registry, type_name)  # raises: the name is unknown
        found = check_strategy_source(registry, type_name)
    except FtkError as exc:
        if "." in type_name or not unimported:
            errors.add((*loc, "type"), str(exc))
        else:
            notes.add(
                (*loc, "type"),
                _maybe_registered(str(exc), unimported),
            )
        return
    if not extras:
        return
    if found.takes_options is False:
        for key in extras:
            errors.add((*loc, key), f"unknown key for strategy {type_name!r}" + suggest(key, common))
        return
    keys = ", ".join(extras)
    notes.add((*loc, "type"), f"options {keys} of {type_name} not checked ({_not_run([])})")


def _set_aside_plugin_keys(
    data: dict[str, Any], model: type[BaseModel], notes: ConfigErrors, unimported: list[str]
) -> dict[str, Any]:
    """``data`` without the top-level keys that only the ``unimported`` plugins could define (noted)."""
    known = config_keys(model)
    kept = {}
    for key, value in data.items():
        if key in known:
            kept[key] = value
            continue
        hint = suggest(key, sorted(known))
        notes.add(
            (key,),
            _maybe_registered(f"unknown key{hint}", unimported, "add"),
        )
    return kept


def drop_nulls(data: dict[str, Any], model: type[BaseModel]) -> None:
    """A key set to null means "not set": remove such keys the schema defines (top level and in
    dataset entries), so their defaults apply.  A null under a key nobody defines stays, so that
    a misspelt key is still reported."""
    keys = config_keys(model)
    for key in [key for key, value in data.items() if value is None and key in keys]:
        if not _field_of(model, key).is_required():
            del data[key]
    for list_key in DATASET_LIST_KEYS:
        entries = data.get(list_key)
        if isinstance(entries, list):
            for entry in entries:
                if isinstance(entry, dict):
                    for key in [key for key, value in entry.items() if value is None and key != "path"]:
                        del entry[key]


def config_keys(model: type[BaseModel]) -> set[str]:
    """The top-level keys ``model`` accepts: its field names and their aliases."""
    keys = set(model.model_fields)
    for info in model.model_fields.values():
        keys |= {alias for alias in (info.alias, info.validation_alias) if isinstance(alias, str)}
    return keys


def _field_of(model: type[BaseModel], key: str) -> Any:
    """The field of ``model`` that the top-level ``key`` (a field name or an alias) sets."""
    if key in model.model_fields:
        return model.model_fields[key]
    return next(info for info in model.model_fields.values() if key in (info.alias, info.validation_alias))


def _dataset_keys(data: dict[str, Any], registry: Registry) -> dict[tuple[str, int], set[str]]:
    """The keys each dataset entry may hold: the common ones and its strategy's options."""
    known: dict[tuple[str, int], set[str]] = {}
    for list_key in DATASET_LIST_KEYS:
        entries = data.get(list_key)
        if not isinstance(entries, list):
            continue
        for index, raw in enumerate(entries):
            keys = set(DatasetConfig.model_fields)
            if isinstance(raw, dict):
                type_name = str(raw.get("type", DatasetConfig.model_fields["type"].default))
                strategy = registry.strategies.get(type_name)
                if strategy is not None and strategy.options_model is not None:
                    keys |= set(strategy.options_model.model_fields)
            known[(list_key, index)] = keys
    return known


def validate_config(
    source: ConfigSource,
    manager: FtkPluginManager,
    run_config_code: bool = True,
    rewrite: ConfigRewrite | None = None,
) -> FtkConfig:
    """Validate raw config data against the schema, plugin sections and strategy options.

    ``rewrite``: what the ``rewrite_config`` hooks did (their problems are reported with the
    others, their deferred decisions are settled here).  ``run_config_code=False``: the config's
    own code is checked from its source (see the module's docstring); what it leaves unchecked is
    listed in ``source.notes``.
    """
    registry = manager.collect_registrations()
    model = build_config_model(registry.sections)
    data = source.data
    drop_nulls(data, model)
    if rewrite is not None:
        rewrite.settle(config_keys(model), _dataset_keys(data, registry))
        source.rewrite_notes = rewrite.note_lines()
    errors = ConfigErrors(source, rewrite.explained_if_unknown if rewrite is not None else None)
    for loc, message in rewrite.problems if rewrite is not None else []:
        errors.add(loc, message)
    notes = None if run_config_code else ConfigErrors(source)
    unimported = list(manager.unimported) if notes is not None else []
    if notes is not None and unimported:
        data = _set_aside_plugin_keys(data, model, notes, unimported)
    options = {
        key: _validate_dataset_options(data.get(key), registry, errors, key, notes, unimported)
        for key in DATASET_LIST_KEYS
    }
    for loc, message in _numbers_given_as_booleans(data, model):
        errors.add(loc, message)
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        errors.add_validation_error(exc, model)
        errors.raise_if_any()
        raise AssertionError("unreachable") from exc
    from ftk.core.machine import resolve_auto_precision

    for loc, message in resolve_auto_precision(cfg, explicit_fp16="fp16" in data):
        source.rewrite_notes.append(f"{source.where(loc)}: {format_loc(loc)}: {message}")
    choices = _choice_problems(cfg, registry)
    if notes is not None and unimported:
        for loc, message in choices:
            notes.add(
                loc,
                _maybe_registered(message, unimported),
            )
        choices = []
    for loc, message in [
        *cfg.combination_problems(),
        *choices,
        *manager.hooks.config_problems(cfg),
    ]:
        errors.add(loc, message)
    errors.raise_if_any()
    if notes is not None:
        source.notes = notes.lines()
        source.unchecked = {key: value for key, value in source.data.items() if key not in data}
    for key in DATASET_LIST_KEYS:
        for index, dataset in enumerate(getattr(cfg, key)):
            dataset._options = options[key].get(index)
            for name, value in (dataset._options.model_dump() if dataset._options else {}).items():
                setattr(dataset, name, value)
    return cfg


def rewrite_config(source: ConfigSource, manager: FtkPluginManager) -> ConfigRewrite:
    """Run the plugins' ``rewrite_config`` hooks on ``source``'s data (changed in place)."""
    registry = manager.collect_registrations()
    known = frozenset(config_keys(build_config_model(registry.sections)))
    rewrite = ConfigRewrite(source, known_keys=known)
    manager.hooks.rewrite_config(rewrite)
    return rewrite


def config_from_data(
    data: dict[str, Any], manager: FtkPluginManager | None = None, name: str = "<config>"
) -> FtkConfig:
    """Validate config data built in Python (no file) against the built-ins and ``manager``'s plugins."""
    source = ConfigSource(Path(name), dict(data))
    if manager is None:
        rewrite = rewrite_config(source, create_plugin_manager())
        manager = create_plugin_manager(rewrite.unhandled_plugins())
    else:
        rewrite = rewrite_config(source, manager)
    return validate_config(source, manager, rewrite=rewrite)


def load_config(
    path: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    manager: FtkPluginManager | None = None,
    run_config_code: bool = True,
) -> tuple[FtkConfig, FtkPluginManager]:
    """Read, override and validate ``path``; load the plugins it names. Returns (config, plugin manager).

    ``run_config_code=False`` checks the code the config names without running it (module docstring).
    """
    cfg, manager, _ = read_config(path, overrides, manager, run_config_code)
    return cfg, manager


def read_config(
    path: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    manager: FtkPluginManager | None = None,
    run_config_code: bool = True,
) -> tuple[FtkConfig, FtkPluginManager, ConfigSource]:
    """``load_config`` that also returns the source (the line of each key, for later problems)."""
    source = read_config_file(path)
    if overrides:
        apply_overrides(source, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    if manager is None:
        manager = create_plugin_manager()
    rewrite = rewrite_config(source, manager)
    plugins = source.data.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise FtkError(f"{source.where(('plugins',))}: plugins: must be a list of module names")
    load = manager.load_config_plugins if run_config_code else manager.check_config_plugins
    for index, plugin in enumerate(plugins):
        if index in rewrite.handled_plugins:
            continue
        try:
            load([plugin])
        except FtkError as exc:  # reported with the config's other problems
            rewrite.problem(("plugins", index), str(exc))
    rewrite.unhandled_plugins()
    return validate_config(source, manager, run_config_code, rewrite), manager, source


def dump_config(cfg: FtkConfig) -> dict[str, Any]:
    """The resolved config as plain data (defaults filled in, strategy options included).

    Plugin keys the config leaves unset (None) are left out, so the file also loads where those
    plugins are not installed.
    """
    data = cfg.model_dump(mode="json", by_alias=True)
    fields = type(cfg).model_fields
    for name in set(fields) - set(FtkConfig.model_fields):
        key = fields[name].serialization_alias or name
        if data.get(key) is None:
            data.pop(key, None)
    return data
