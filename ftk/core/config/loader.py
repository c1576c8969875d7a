"""Load and validate a config: YAML + overrides -> plugins -> schema (+ plugin sections) -> FtkConfig.

Every problem is reported as ``file:line: key.path: what is wrong (did you mean ...?)``, all of
them at once, as one ``FtkError``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError, create_model

from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.config.source import ConfigSource, Loc, apply_overrides, parse_overrides, read_config_file
from ftk.core.errors import FtkError, format_loc, suggest
from ftk.core.plugins import FtkPluginManager, create_plugin_manager
from ftk.core.registry import Registry, Section, Strategy

DATASET_LIST_KEYS = ("datasets", "test_datasets")


#: axolotl keys that ftk spells differently; the error names ftk's key instead of a near miss.
AXOLOTL_RENAMES: dict[str, str] = {
    "cosine_min_lr_ratio": "min_lr_ratio",
    "auto_resume_from_checkpoints": "auto_resume",
    "flash_attention": "attn_implementation",
    "sdp_attention": "attn_implementation",
}


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

    def __init__(self, source: ConfigSource) -> None:
        self.source = source
        self.problems: list[tuple[Loc, str]] = []

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
        for item in error.errors():
            loc = (*prefix, *item["loc"])
            kind = item["type"]
            if kind == "extra_forbidden":
                if len(loc) == 1 and loc[0] in AXOLOTL_RENAMES:
                    self.add(
                        loc, f"unknown key (ftk calls it '{AXOLOTL_RENAMES[loc[0]]}'; see docs/axolotl.md)"
                    )
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

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        lines = []
        for loc, message in sorted(self.problems, key=lambda item: self._line_of(item[0])):
            where = self.source.where(loc) if loc else str(self.source.path)
            key = format_loc(loc)
            lines.append(f"{where}: {key}: {message}" if loc else f"{where}: {message}")
        raise FtkError("\n".join(lines))


def build_config_model(sections: dict[str, Section]) -> type[FtkConfig]:
    """FtkConfig extended with the plugins' keys: one optional field per section, the fields of flat ones."""
    if not sections:
        return FtkConfig
    fields: dict[str, Any] = {}
    owners = {name: "ftk" for name in FtkConfig.model_fields}
    flat: dict[str, type[BaseModel]] = {}
    for section in sections.values():
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


def resolve_strategy(registry: Registry, type_name: str) -> Strategy:
    """Find the strategy a dataset's ``type`` names: a registered name or ``package.module.function``."""
    if type_name in registry.strategies:
        return registry.strategies[type_name]
    if "." not in type_name:
        raise FtkError(
            f"unknown strategy{suggest(type_name, list(registry.strategies))}; "
            f"registered: {', '.join(sorted(registry.strategies))}"
        )
    module_path, _, attr = type_name.rpartition(".")
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        if exc.name and (module_path == exc.name or module_path.startswith(exc.name + ".")):
            raise FtkError(f"no module named {exc.name!r} (strategy {type_name!r})") from exc
        raise FtkError(f"importing {module_path!r} failed: ModuleNotFoundError: {exc}") from exc
    except Exception as exc:  # an error inside the user's module is shown as what it is
        raise FtkError(f"importing {module_path!r} failed: {type(exc).__name__}: {exc}") from exc
    build = getattr(module, attr, None)
    if build is None or not callable(build):
        raise FtkError(f"module {module_path!r} has no function {attr!r}")
    return Strategy(type_name, build, getattr(build, "options_model", None), plugin=module_path)


def _validate_dataset_options(
    raw_datasets: Any, registry: Registry, errors: ConfigErrors, key: str
) -> dict[int, BaseModel]:
    """Check each dataset's strategy-specific keys against that strategy's options model.

    Works on the raw data, so these problems are reported together with the others.
    """
    options_by_index: dict[int, BaseModel] = {}
    if not isinstance(raw_datasets, list):
        return options_by_index
    common = list(DatasetConfig.model_fields)
    for index, raw in enumerate(raw_datasets):
        if not isinstance(raw, dict):
            continue
        loc: Loc = (key, index)
        type_name = raw.get("type", DatasetConfig.model_fields["type"].default)
        try:
            strategy = resolve_strategy(registry, str(type_name))
        except FtkError as exc:
            errors.add((*loc, "type"), str(exc))
            continue
        extras = {key: value for key, value in raw.items() if key not in common}
        if strategy.options_model is None:
            for key in extras:
                errors.add((*loc, key), f"unknown key for strategy {type_name!r}" + suggest(key, common))
            continue
        try:
            options_by_index[index] = strategy.options_model.model_validate(extras)
        except ValidationError as exc:
            # An unknown key may be a common dataset key misspelled: suggest from both sets.
            errors.add_validation_error(exc, strategy.options_model, prefix=loc, extra_candidates=common)
    return options_by_index


def validate_config(source: ConfigSource, manager: FtkPluginManager) -> FtkConfig:
    """Validate raw config data against the schema, plugin sections and strategy options."""
    registry = manager.collect_registrations()
    model = build_config_model(registry.sections)
    errors = ConfigErrors(source)
    options = {
        key: _validate_dataset_options(source.data.get(key), registry, errors, key)
        for key in DATASET_LIST_KEYS
    }
    try:
        cfg = model.model_validate(source.data)
    except ValidationError as exc:
        errors.add_validation_error(exc, model)
        errors.raise_if_any()
        raise AssertionError("unreachable") from exc
    for loc, message in [
        *cfg.combination_problems(),
        *_choice_problems(cfg, registry),
        *manager.hooks.config_problems(cfg),
    ]:
        errors.add(loc, message)
    errors.raise_if_any()
    for key in DATASET_LIST_KEYS:
        for index, dataset in enumerate(getattr(cfg, key)):
            dataset._options = options[key].get(index)
            for name, value in (dataset._options.model_dump() if dataset._options else {}).items():
                setattr(dataset, name, value)
    return cfg


def config_from_data(
    data: dict[str, Any], manager: FtkPluginManager | None = None, name: str = "<config>"
) -> FtkConfig:
    """Validate config data built in Python (no file) against the built-ins and ``manager``'s plugins."""
    source = ConfigSource(Path(name), dict(data))
    return validate_config(source, manager or create_plugin_manager(source.data.get("plugins", [])))


def load_config(
    path: str | Path,
    overrides: list[str] | dict[str, Any] | None = None,
    manager: FtkPluginManager | None = None,
) -> tuple[FtkConfig, FtkPluginManager]:
    """Read, override and validate ``path``; load the plugins it names. Returns (config, plugin manager)."""
    source = read_config_file(path)
    if overrides:
        apply_overrides(source, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    plugins = source.data.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise FtkError(f"{source.where(('plugins',))}: plugins: must be a list of module names")
    if manager is None:
        manager = create_plugin_manager(plugins)
    else:
        manager.load_config_plugins(plugins)
    return validate_config(source, manager), manager


def dump_config(cfg: FtkConfig) -> dict[str, Any]:
    """The resolved config as plain data (defaults filled in, strategy options included).

    Plugin keys the config leaves unset (None) are left out, so the file also loads where those
    plugins are not installed.
    """
    data = cfg.model_dump(mode="json")
    for name in set(type(cfg).model_fields) - set(FtkConfig.model_fields):
        if data.get(name) is None:
            del data[name]
    return data
