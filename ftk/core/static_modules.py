"""Look at a Python module without running it: find its file, parse it, see what it defines.

``ftk validate`` and ``ftk plugins CONFIG`` check the code a config names (a dataset's
``type: pkg.module.function``, the ``plugins:`` list) this way, so that checking a config never
runs it.  Finding a module walks its dotted name the way the import system does, but asks the
finders for each part's spec only: no package ``__init__`` is executed, not even the parents'.
The source file is read and parsed with ``ast``; what can be seen in it is checked:

* the module exists (the first missing part is named, as ``ModuleNotFoundError`` names it);
* importing it would fail for certain: a syntax error, a top-level ``import`` of a package
  this Python does not have, an unconditional top-level ``raise``;
* a name is bound at its top level, and what it is: a plain function (with its signature), a
  class, a literal value (with the value), or something only running the code would tell.

Whatever cannot be seen without running the code (a decorated function's signature, a name
bound by ``from x import *``, an extension module) is left alone rather than guessed.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any, Literal

from ftk.core.errors import FtkError

#: How a name is bound at a module's top level, as far as the source shows.
Kind = Literal["function", "class", "value", "other"]

#: Source text that means the module changes where imports are found before it imports:
#: its top-level imports are then not checked.
_IMPORT_SYSTEM_WORDS = ("sys.path", "meta_path", "path_hooks", "site.", "__path__")


class ModuleNotFound(FtkError):
    """A module (or one of its parent packages) this Python cannot find; ``name`` is the first missing one."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no module named {name!r}")
        self.name = name


@dataclass
class ImportProblem:
    """Why importing a module would certainly fail, and where: ``str()`` gives both in one line.

    ``ModuleNotFoundError: No module named 'x' (at /src/mod.py:3)``.
    """

    text: str
    filename: str
    line: int

    def __str__(self) -> str:
        return f"{self.text} (at {self.filename}:{self.line})"


@dataclass
class Binding:
    """What a top-level name is bound to, as far as the source shows.

    ``signature`` is known for a plain function (and a class whose constructor the source shows);
    ``value`` for a literal (``CONSTANT = 3``: ``has_value`` is true).
    """

    kind: Kind
    node: ast.AST | None = None
    signature: inspect.Signature | None = None
    value: Any = None
    has_value: bool = False
    decorators: list[str] = field(default_factory=list)


@dataclass
class ModuleView:
    """A module found and parsed, never run."""

    name: str
    path: str | None
    tree: ast.Module | None  # None: no Python source to read (built-in, extension, sourceless)
    source: str = ""

    @property
    def readable(self) -> bool:
        """Whether the source was read (else nothing about the module's contents can be said)."""
        return self.tree is not None

    def bindings(self) -> tuple[dict[str, Binding], bool]:
        """The names bound at the top level, and whether other names may exist too.

        A module with ``from x import *`` or a module-level ``__getattr__`` may have any name.
        A name bound inside ``if``/``try``/``for``/``with`` is known to exist but not what it is.
        """
        names: dict[str, Binding] = {}
        open_ended = False
        if self.tree is None:
            return names, True
        for statement in self.tree.body:
            for name, binding in _bound_by(statement):
                if name == "*":
                    open_ended = True
                    continue
                names[name] = binding
        if "__getattr__" in names:
            open_ended = True
        return names, open_ended

    def assigns_attribute(self, owner: str, attribute: str) -> bool:
        """Whether the module sets ``owner.attribute`` anywhere at its top level (``fn.options_model = M``)."""
        if self.tree is None:
            return False
        for node in _top_level_nodes(self.tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            elif isinstance(node, ast.Call) and _dotted(node.func) == "setattr" and len(node.args) >= 2:
                target, name = node.args[0], node.args[1]
                if _dotted(target) == owner and isinstance(name, ast.Constant) and name.value == attribute:
                    return True
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == attribute
                    and _dotted(target.value) == owner
                ):
                    return True
        return False

    def import_problem(self) -> ImportProblem | None:
        """The first top-level statement that would certainly make importing the module fail, if any.

        A syntax error, an ``import`` of a top-level package this Python cannot find, or a
        ``raise``; statements inside ``if``/``try`` are left alone (they may not run, or be caught).
        """
        if self.tree is None or self.path is None:
            return None
        check_imports = not any(word in self.source for word in _IMPORT_SYSTEM_WORDS)
        for statement in self.tree.body:
            line = getattr(statement, "lineno", 0)
            if isinstance(statement, ast.Raise) and statement.exc is not None:
                return ImportProblem(f"it raises {ast.unparse(statement.exc)}", self.path, line)
            if not check_imports:
                continue
            for top in _imported_packages(statement):
                if not package_exists(top):
                    return ImportProblem(f"ModuleNotFoundError: No module named {top!r}", self.path, line)
        return None


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a name or a chain of attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _imported_packages(statement: ast.stmt) -> Iterator[str]:
    """The top-level packages an ``import`` statement needs (absolute imports only)."""
    if isinstance(statement, ast.Import):
        for alias in statement.names:
            yield alias.name.split(".", 1)[0]
    elif isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
        top = statement.module.split(".", 1)[0]
        if top != "__future__":
            yield top


def _top_level_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node that runs when the module is imported: not inside function bodies, class bodies or lambdas."""
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            pending.extend(getattr(node, "decorator_list", []))
            continue
        if isinstance(node, ast.ClassDef):
            pending.extend([*node.decorator_list, *node.bases])
            continue
        pending.extend(ast.iter_child_nodes(node))


def _bound_by(statement: ast.stmt) -> Iterator[tuple[str, Binding]]:
    """The names a top-level statement binds, with what they are (``*`` for a star import)."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
        decorators = [ast.unparse(d) for d in statement.decorator_list]
        signature = None if decorators else signature_of(statement)
        yield statement.name, Binding("function", statement, signature, decorators=decorators)
    elif isinstance(statement, ast.ClassDef):
        yield statement.name, Binding("class", statement, _constructor_signature(statement))
    elif isinstance(statement, ast.Import | ast.ImportFrom):
        for alias in statement.names:
            if alias.name == "*":
                yield "*", Binding("other", statement)
            else:
                yield (alias.asname or alias.name.split(".", 1)[0]), Binding("other", statement)
    elif isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value is not None:
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        binding = _value_binding(statement, statement.value)
        for target in targets:
            if isinstance(target, ast.Name):
                yield target.id, binding
            else:  # unpacking: a, b = ...
                for name in _stored_names(target):
                    yield name, Binding("other", statement)
    else:
        # Anything else (if, try, for, with, while, match, augmented assignments, walrus):
        # the names it may bind exist, but what they are is known only by running it.
        for name in _stored_names(statement):
            yield name, Binding("other", statement)


def _stored_names(node: ast.AST) -> Iterator[str]:
    """Names bound anywhere in ``node`` at module level (not inside functions or classes' bodies)."""
    pending: list[ast.AST] = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, ast.Name) and isinstance(current.ctx, ast.Store):
            yield current.id
        elif isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield current.name
            continue
        elif isinstance(current, ast.Import | ast.ImportFrom):
            for alias in current.names:
                yield "*" if alias.name == "*" else (alias.asname or alias.name.split(".", 1)[0])
        elif isinstance(current, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            continue
        pending.extend(ast.iter_child_nodes(current))


def _value_binding(statement: ast.stmt, value: ast.expr) -> Binding:
    """A literal (``3``, ``"text"``, ``[1, 2]``) is known with its value; anything else is not."""
    try:
        literal = ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return Binding("other", statement)
    return Binding("value", statement, value=literal, has_value=True)


class _Shown:
    """Shows a piece of source as it was written (a default value or an annotation in a signature)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown(node: ast.expr | None) -> Any:
    return inspect.Parameter.empty if node is None else _Shown(ast.unparse(node))


def signature_of(
    function: ast.FunctionDef | ast.AsyncFunctionDef, drop_first: bool = False
) -> inspect.Signature:
    """The ``inspect.Signature`` a function's source declares (defaults and annotations as written).

    ``drop_first`` leaves out the first positional parameter (``self`` of a method).
    """
    args = function.args
    P = inspect.Parameter
    params: list[inspect.Parameter] = []
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        kind = P.POSITIONAL_ONLY if index < len(args.posonlyargs) else P.POSITIONAL_OR_KEYWORD
        params.append(P(arg.arg, kind, default=_shown(default), annotation=_shown(arg.annotation)))
    if drop_first and params:
        params = params[1:]
    if args.vararg is not None:
        params.append(P(args.vararg.arg, P.VAR_POSITIONAL, annotation=_shown(args.vararg.annotation)))
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append(
            P(arg.arg, P.KEYWORD_ONLY, default=_shown(kw_default), annotation=_shown(arg.annotation))
        )
    if args.kwarg is not None:
        params.append(P(args.kwarg.arg, P.VAR_KEYWORD, annotation=_shown(args.kwarg.annotation)))
    return inspect.Signature(params, return_annotation=_shown(function.returns))


def _constructor_signature(cls: ast.ClassDef) -> inspect.Signature | None:
    """What calling the class takes, when its source shows it: no bases, metaclass or decorators."""
    if cls.bases or cls.keywords or cls.decorator_list:
        return None
    methods = {
        node.name: node for node in cls.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    if "__new__" in methods:
        return None
    init = methods.get("__init__")
    if init is None:
        return inspect.Signature([])
    if init.decorator_list:
        return None
    return signature_of(init, drop_first=True)


# --- finding modules --------------------------------------------------------------------------


def _find_spec(name: str, path: list[str] | None) -> ModuleSpec | None:
    """The spec the import system would use for ``name`` (a submodule: searched in ``path``), without loading it."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__spec__", None) or ModuleSpec(
            name, None, origin=getattr(module, "__file__", None)
        )
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec = find(name, path, None)
        except (ImportError, ValueError, OSError):
            continue
        if spec is not None:
            return spec
    return None


def package_exists(name: str) -> bool:
    """Whether the top-level module or package ``name`` can be found (nothing of it is run)."""
    return name in sys.builtin_module_names or _find_spec(name, None) is not None


def find_module(module_path: str) -> ModuleView:
    """Find and parse the module ``module_path`` without running it or any of its parent packages.

    Raises ``ModuleNotFound`` naming the first part that does not exist.  A module whose source
    has a syntax error is returned unparsed with the error kept: ``import_problem`` reports it.
    """
    parts = module_path.split(".")
    if not all(part.isidentifier() for part in parts):
        raise ModuleNotFound(module_path)
    search: list[str] | None = None
    spec: ModuleSpec | None = None
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        if depth > 1 and search is None and name not in sys.modules:  # the parent is no package
            raise ModuleNotFound(name)
        spec = _find_spec(name, search)
        if spec is None:
            raise ModuleNotFound(name)
        locations = spec.submodule_search_locations
        search = list(locations) if locations is not None else None
    assert spec is not None
    return _view(module_path, spec)


def _view(name: str, spec: ModuleSpec) -> ModuleView:
    origin = spec.origin if spec.has_location else None
    if origin is None and spec.submodule_search_locations is not None and spec.loader is None:
        return ModuleView(name, None, ast.Module(body=[], type_ignores=[]))  # a namespace package: empty
    if origin is None or not origin.endswith(".py"):
        return ModuleView(name, origin, None)
    try:
        source = importlib.util.decode_source(Path(origin).read_bytes())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ModuleView(name, origin, None)
    try:
        tree = ast.parse(source, filename=origin)
    except SyntaxError as exc:
        return BrokenModuleView(name, origin, None, source, exc)
    except (ValueError, RecursionError, MemoryError):
        return ModuleView(name, origin, None)
    return ModuleView(name, origin, tree, source)


@dataclass
class BrokenModuleView(ModuleView):
    """A module whose source does not parse: importing it fails with this ``SyntaxError``."""

    error: SyntaxError | None = None

    def import_problem(self) -> ImportProblem | None:
        """The syntax error, as importing would raise it."""
        assert self.error is not None and self.path is not None
        return ImportProblem(f"SyntaxError: {self.error.msg}", self.path, self.error.lineno or 0)
