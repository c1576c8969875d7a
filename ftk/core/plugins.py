"""The plugin manager: finds, loads and describes plugins, and calls their hooks.

Plugins load in a fixed order: the built-ins (``ftk/plugins/``), then installed distributions'
entry points in the group ``ftk.plugins``, then the modules named in the config's ``plugins:``
list.  Built-ins and entry points are installed code; the modules a config names run only for the
commands that run the config (``train``, ``preprocess``...): ``ftk validate`` and ``ftk plugins
CONFIG`` check them from their source without importing them (``check_config_plugins``), unless
given ``--import``.  Environment variables:

* ``FTK_LOAD_PLUGINS=a,b``: load only these entry-point plugins (empty: none of them);
* ``FTK_DISABLE_PLUGINS=a,b``: never load these plugins, whatever their source;
* ``FTK_TRACE_HOOKS=1``: print each hook call, the implementations called and their results.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from ftk.core import hookspecs
from ftk.core.errors import FtkError
from ftk.core.hooks import Hooks
from ftk.core.registry import REGISTRATION_HOOKS, Registry
from ftk.core.static_modules import ModuleNotFound, find_module

ENTRY_POINT_GROUP = "ftk.plugins"

#: Built-in plugins (module ``ftk.plugins.<name>``).  Their order decides nothing: defaults that
#: others may replace are ``trylast`` implementations, and names clash as errors.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "hf_model",
    "lora",
    "freeze",
    "optimizers",
    "loss",
    "prompt_strategies",
    "trackers",
    "progress",
    "metrics_log",
    "run_report",
    "advisor",
    "profiling",
    "run_schedule",
    "quantization",
    "qat",
    "deepspeed",
    "fsdp",
    "liger",
    "tiny_model",
    "axolotl_compat",
)


@dataclass
class PluginInfo:
    """Where a loaded plugin came from and what it implements, for ``ftk plugins``."""

    name: str
    source: str  # "built-in", "entry point", "config", or "config, not imported"
    module: str
    version: str
    hooks: list[str] = field(default_factory=list)


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _describe_exception(exc: BaseException, module_path: str = "") -> str:
    """One line naming the exception and where it was raised (the innermost frame).

    When the missing module is the plugin's own (a misspelt or uninstalled plugin), the line says
    just that; a plugin that fails on a missing dependency keeps the place of its import.
    """
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and (module_path == missing or module_path.startswith(f"{missing}.")):
        return f"no module named {missing!r} (is the package installed in this Python?)"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


class PluginImportError(FtkError):
    """A plugin module could not be imported; carries the original exception as ``__cause__``."""


class FtkPluginManager:
    """Loads plugins, calls their hooks (``hooks``, typed) and collects their registrations."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        #: Config plugins checked from their source but not imported (``check_config_plugins``).
        self.unimported: dict[str, PluginInfo] = {}
        self.registry = Registry()
        self.hooks = Hooks(self.pm.hook)
        self._registered_hooks_done = False
        self._trace_undo: Callable[[], None] | None = None
        if os.environ.get("FTK_TRACE_HOOKS", "") not in ("", "0"):
            self.enable_tracing()

    # --- loading ------------------------------------------------------------------------------

    def _blocked(self, name: str) -> bool:
        return name in (_env_list("FTK_DISABLE_PLUGINS") or [])

    def _register(self, module: ModuleType, name: str, source: str, version: str) -> None:
        if self._blocked(name) or name in self.infos or self.pm.is_registered(module):
            return
        self.pm.register(module, name=name)
        hooks = sorted(
            caller.name for caller in self.pm.get_hookcallers(module) or [] if caller.name != "__init__"
        )
        self.infos[name] = PluginInfo(name, source, module.__name__, version, hooks)

    def _import(self, module_path: str, name: str, source: str) -> ModuleType:
        try:
            return importlib.import_module(module_path)
        except Exception as exc:  # a broken plugin is an error, never a warning
            raise PluginImportError(
                f"plugin {name!r} ({source}, module {module_path!r}) failed to import: "
                f"{_describe_exception(exc, module_path)}"
            ) from exc

    def load_builtins(self) -> None:
        """Register the plugins that ship with ftk."""
        from ftk import __version__

        for name in BUILTIN_PLUGINS:
            if self._blocked(name):
                continue
            module = self._import(f"ftk.plugins.{name}", name, "built-in")
            self._register(module, name, "built-in", __version__)

    def load_entry_points(self, eps: Iterable[EntryPoint] | None = None) -> None:
        """Register installed distributions' plugins from the ``ftk.plugins`` entry-point group."""
        allow = _env_list("FTK_LOAD_PLUGINS")
        for ep in eps if eps is not None else entry_points(group=ENTRY_POINT_GROUP):
            if allow is not None and ep.name not in allow:
                continue
            if self._blocked(ep.name) or ep.name in self.infos:
                continue
            dist = getattr(ep, "dist", None)
            source = f"entry point ({dist.name})" if dist is not None else "entry point"
            try:
                plugin = ep.load()
            except Exception as exc:
                detail = _describe_exception(exc)
                raise PluginImportError(
                    f"plugin {ep.name!r} ({source}, {ep.value!r}) failed to import: {detail}"
                ) from exc
            version = dist.version if dist is not None else "unknown"
            self._register(plugin, ep.name, "entry point", version)

    def load_config_plugins(self, modules: Iterable[str]) -> None:
        """Register the modules a config names in ``plugins:`` (each a dotted module path)."""
        for module_path in modules:
            if self._blocked(module_path) or module_path in self.infos:
                continue
            module = self._import(module_path, module_path, "config")
            version = str(getattr(module, "__version__", "unknown"))
            self._register(module, module_path, "config", version)
        self._registered_hooks_done = False

    def check_config_plugins(self, modules: Iterable[str]) -> None:
        """Check the modules a config names in ``plugins:`` from their source, without importing them.

        A module that is missing or would certainly fail to import is a ``PluginImportError``
        worded as ``load_config_plugins`` words it; the others are listed in ``unimported`` with
        the hooks their source shows.  They register nothing: what they would add is unknown.
        """
        specs = {name for name in vars(self.pm.hook) if not name.startswith("_")}
        for module_path in modules:
            if self._blocked(module_path) or module_path in self.infos or module_path in self.unimported:
                continue
            what = f"plugin {module_path!r} (config, module {module_path!r})"
            try:
                view = find_module(module_path)
            except ModuleNotFound as exc:
                detail = _describe_exception(ModuleNotFoundError(str(exc), name=exc.name), module_path)
                raise PluginImportError(f"{what} failed to import: {detail}") from None
            problem = view.import_problem()
            if problem is not None:
                raise PluginImportError(f"{what} would fail to import: {problem}")
            names, _ = view.bindings()
            hooks = sorted(
                name
                for name, binding in names.items()
                if name in specs and binding.kind == "function" and binding.decorators
            )
            version = names.get("__version__")
            shown = str(version.value) if version is not None and version.has_value else "unknown"
            self.unimported[module_path] = PluginInfo(
                module_path, "config, not imported", module_path, shown, hooks
            )

    # --- registration hooks ------------------------------------------------------------------

    def collect_registrations(self) -> Registry:
        """Run the registration hooks of every loaded plugin (once) and return what they added."""
        if self._registered_hooks_done:
            return self.registry
        self.registry = Registry()
        for hook_name in REGISTRATION_HOOKS:
            caller = getattr(self.pm.hook, hook_name)
            # Oldest first, so that a name clash blames the later plugin.
            for impl in caller.get_hookimpls():
                self._trace(f"{hook_name} -> {impl.plugin_name}")
                impl.function(register=self.registry.registrar(hook_name, impl.plugin_name))
        self._registered_hooks_done = True
        return self.registry

    # --- tracing ------------------------------------------------------------------------------

    def _trace(self, line: str) -> None:
        if self._trace_undo is not None:
            print(f"[ftk trace] {line}", file=sys.stderr)

    def enable_tracing(self) -> None:
        """Print every hook call, the implementations called and the result, to stderr."""

        def short(value: Any) -> str:
            text = repr(value)
            return text if len(text) <= 80 else text[:77] + "..."

        def before(hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
            names = ", ".join(impl.plugin_name for impl in reversed(impls)) or "(none)"
            args = ", ".join(f"{k}={short(v)}" for k, v in kwargs.items())
            print(f"[ftk trace] call {hook_name}({args}) -> implementations: {names}", file=sys.stderr)

        def after(outcome: Any, hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
            try:
                result = outcome.get_result()
            except BaseException as exc:  # noqa: BLE001 - report whatever the hook raised
                print(f"[ftk trace] {hook_name} raised {type(exc).__name__}: {exc}", file=sys.stderr)
                return
            print(f"[ftk trace] {hook_name} returned {short(result)}", file=sys.stderr)

        self._trace_undo = self.pm.add_hookcall_monitoring(before, after)


def create_plugin_manager(config_plugins: Iterable[str] = ()) -> FtkPluginManager:
    """Build a manager with the built-ins, entry points and ``config_plugins`` loaded, in that order."""
    manager = FtkPluginManager()
    manager.load_builtins()
    manager.load_entry_points()
    manager.load_config_plugins(config_plugins)
    return manager
