"""Find the prompt strategy a dataset's ``type`` names, and check it before any data is read.

``type`` is a registered name (``chat_template``) or the dotted path of a function
(``mypkg.module.build``).  ftk calls that function once per dataset as
``build(dataset, tokenizer, cfg)`` and then calls what it returns with each row, a dict.
Everything that can be checked without data is checked when the config is validated, so the
error names the config line: an unknown name (with the closest known one, or what to write
instead of an axolotl type ftk does not have), a module that does not import, a missing or
non-callable attribute, a function that cannot be called with ``(dataset, tokenizer, cfg)``.  What
the function returns is checked when it is called: a function of one row that returns a mapping
with ``input_ids`` and ``labels`` (or a list of them).  An exception raised in the user's code
becomes a one-line error naming the file (and the row); ``--verbose`` shows its traceback.

``ftk validate`` runs none of the config's code: ``check_strategy_source`` makes the same checks
on the module's source, found and parsed without importing it (``ftk.core.static_modules``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ftk.core.errors import FtkError, suggest
from ftk.core.registry import Registry, RowFeatures, Strategy
from ftk.core.static_modules import ModuleNotFound, find_module

#: axolotl dataset types that ftk does not have, and what to write instead (docs/axolotl.md).
AXOLOTL_TYPES = {
    "sharegpt": (
        "type: chat_template with field_messages: conversations, "
        "message_property_mappings: {role: from, content: value} and roles: {user: [human], assistant: [gpt]}"
    ),
    "alpaca_chat": "type: alpaca_chat or alpaca:chat; its load_* variants are not built in",
}
DOCS = "docs/datasets.md#your-own-format-type-mypkgmodulefunction"
CALL = "(dataset, tokenizer, cfg)"


def _axolotl_hint(type_name: str) -> str:
    """``; ... use ...`` for an axolotl type (``sharegpt``, ``sharegpt:chat``, ...), else ""."""
    head = re.split(r"[.:]", type_name, maxsplit=1)[0]
    if head in AXOLOTL_TYPES:
        return f" (axolotl's; in ftk write {AXOLOTL_TYPES[head]}: see docs/axolotl.md)"
    return ""


def _unknown(registry: Registry, type_name: str) -> FtkError:
    names = sorted(registry.strategies)
    hint = _axolotl_hint(type_name) or suggest(type_name, names)
    return FtkError(f"unknown strategy {type_name!r}{hint}; registered: {', '.join(names)}")


def _no_module(registry: Registry, type_name: str, missing: str) -> FtkError:
    """``no module named 'x' (strategy 'x.y.fn')``, with a hint when ``x`` is a registered name."""
    head = type_name.split(".", 1)[0]
    hint = _axolotl_hint(type_name)
    if not hint and head in registry.strategies:
        hint = f"; {head!r} is a registered strategy: write type: {head}"
    return FtkError(f"no module named {missing!r} (strategy {type_name!r}){hint}")


def _import(registry: Registry, type_name: str, module_path: str) -> Any:
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        if exc.name and (module_path == exc.name or module_path.startswith(exc.name + ".")):
            raise _no_module(registry, type_name, exc.name) from exc
        raise FtkError(f"importing {module_path!r} failed: ModuleNotFoundError: {exc}") from exc
    except Exception as exc:  # an error inside the user's module is shown as what it is
        raise FtkError(f"importing {module_path!r} failed: {type(exc).__name__}: {exc}") from exc


def _signature(function: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # a builtin or extension function: nothing to check
        return None


def check_build_signature(build: Any, what: str, name: str) -> None:
    """An FtkError unless ``build`` can be called as ``build(dataset, tokenizer, cfg)``.

    ``what`` names it in the message (``mypkg.mod.fn``), ``name`` is how the call is shown (``fn``).
    """
    signature = _signature(build)
    if signature is not None:
        check_signature(signature, what, name)


def check_signature(signature: inspect.Signature, what: str, name: str) -> None:
    """An FtkError unless a function of this signature can be called as ``build(dataset, tokenizer, cfg)``."""
    try:
        signature.bind(None, None, None)
    except TypeError:
        hint = ""
        if len(signature.parameters) == 1:
            hint = (
                "; a function of one row goes inside: write build(dataset, tokenizer, cfg) that "
                f"returns it ({DOCS})"
            )
        raise FtkError(
            f"{what} takes {signature} but ftk calls it as {name}{CALL}, "
            f"once, to get the function that turns a row into input_ids and labels{hint}"
        ) from None


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"a mapping with keys {', '.join(map(repr, value)) or '(none)'}"
    return f"{type(value).__name__} {value!r:.40}"


class CheckedRows:
    """A user's row function whose result is checked: ``input_ids`` and ``labels`` (or a list of such)."""

    def __init__(self, to_features: Callable[[dict[str, Any]], RowFeatures], type_name: str) -> None:
        self.to_features = to_features
        self.type_name = type_name

    def __call__(self, row: dict[str, Any]) -> RowFeatures:
        try:
            produced = self.to_features(row)
        except FtkError:
            raise
        except Exception as exc:  # the user's code failed on this row: say so in one line
            raise FtkError(
                f"strategy {self.type_name!r} raised {type(exc).__name__}: {exc} (--verbose shows where)"
            ) from exc
        for features in produced if isinstance(produced, list) else [produced]:
            if not (isinstance(features, dict) and "input_ids" in features and "labels" in features):
                raise FtkError(
                    f"strategy {self.type_name!r} returned {_describe(features)}; ftk needs a mapping "
                    "with input_ids and labels (lists of ints), or a list of such mappings"
                )
        return produced


class CheckedBuild:
    """A user's ``build`` function (a dotted ``type``) whose result is checked when it is called.

    ``__wrapped__`` is the function itself, so ``inspect.unwrap`` finds its source file.
    """

    def __init__(self, build: Callable[..., Any], type_name: str) -> None:
        self.__wrapped__ = build
        self.type_name = type_name

    def __call__(self, dataset: Any, tokenizer: Any, cfg: Any) -> CheckedRows:
        name = f"{self.type_name}{CALL}"
        try:
            to_features = self.__wrapped__(dataset, tokenizer, cfg)
        except FtkError:
            raise
        except Exception as exc:  # the user's code failed: say so in one line
            raise FtkError(
                f"{dataset.path}: {name} raised {type(exc).__name__}: {exc} (--verbose shows where)"
            ) from exc
        if not callable(to_features):
            raise FtkError(
                f"{dataset.path}: {name} returned {_describe(to_features)}, not a function of one row ({DOCS})"
            )
        signature = _signature(to_features)
        if signature is not None:
            try:
                signature.bind(None)
            except TypeError:
                raise FtkError(
                    f"{dataset.path}: {name} returned a function that takes {signature}; "
                    "ftk calls it with one argument, the row (a dict)"
                ) from None
        return CheckedRows(to_features, self.type_name)


def resolve_strategy(registry: Registry, type_name: str) -> Strategy:
    """The strategy a dataset's ``type`` names: a registered name or ``package.module.function``.

    An FtkError (without the config location, which the caller adds) says what is wrong.
    """
    if type_name in registry.strategies:
        strategy = registry.strategies[type_name]
        name = getattr(strategy.build, "__name__", "build")
        check_build_signature(strategy.build, f"strategy {type_name!r} (plugin {strategy.plugin!r})", name)
        return strategy
    if "." not in type_name:
        raise _unknown(registry, type_name)
    module_path, _, attr = type_name.rpartition(".")
    module = _import(registry, type_name, module_path)
    if not hasattr(module, attr):
        functions = [
            name for name, value in vars(module).items() if callable(value) and not name.startswith("_")
        ]
        raise FtkError(f"module {module_path!r} has no attribute {attr!r}{suggest(attr, functions)}")
    build = getattr(module, attr)
    if not callable(build):
        raise FtkError(f"{type_name} is {_describe(build)}, not a function")
    check_build_signature(build, type_name, attr)
    options_model = getattr(build, "options_model", None)
    return Strategy(type_name, CheckedBuild(build, type_name), options_model, plugin=module_path)


@dataclass
class StrategySource:
    """A dotted ``type`` checked from its module's source, without importing it (``ftk validate``).

    ``takes_options``: whether the function has an ``options_model`` (dataset keys of its own);
    None when only running the code would tell (a decorated function, a name it imports).
    """

    name: str
    module: str
    takes_options: bool | None


def check_strategy_source(registry: Registry, type_name: str) -> StrategySource:
    """What ``resolve_strategy`` checks of a dotted ``type``, read from the source: nothing is run.

    The module is found without importing it or its packages (``ftk.core.static_modules``); a
    module that is missing or certainly fails to import, a name it does not define, a literal
    that is not a function and a function whose signature does not fit are errors worded as
    ``resolve_strategy`` words them.  What the source cannot show is left to ``ftk train``.
    """
    module_path, _, attr = type_name.rpartition(".")
    try:
        view = find_module(module_path)
    except ModuleNotFound as exc:
        raise _no_module(registry, type_name, exc.name) from None
    problem = view.import_problem()
    if problem is not None:
        raise FtkError(f"importing {module_path!r} would fail: {problem}")
    unknown = StrategySource(type_name, module_path, None)
    if not view.readable:
        return unknown
    names, open_ended = view.bindings()
    binding = names.get(attr)
    if binding is None:
        if open_ended:
            return unknown
        functions = [name for name, b in names.items() if b.kind != "value" and not name.startswith("_")]
        raise FtkError(f"module {module_path!r} has no attribute {attr!r}{suggest(attr, functions)}")
    if binding.has_value and not callable(binding.value):  # a literal: never a function
        raise FtkError(f"{type_name} is {_describe(binding.value)}, not a function")
    if binding.signature is None:
        return unknown
    check_signature(binding.signature, type_name, attr)
    takes_options = view.assigns_attribute(attr, "options_model")
    if isinstance(binding.node, ast.ClassDef):
        takes_options = takes_options or any(
            name == "options_model" for node in binding.node.body for name in _assigned(node)
        )
    return StrategySource(type_name, module_path, takes_options)


def _assigned(node: ast.stmt) -> list[str]:
    """The plain names an assignment in a class body binds."""
    targets = (
        node.targets
        if isinstance(node, ast.Assign)
        else [node.target]
        if isinstance(node, ast.AnnAssign)
        else []
    )
    return [target.id for target in targets if isinstance(target, ast.Name)]
