"""The commands that ship with ftk, each a module with ``add_arguments(parser)`` and ``run(args)``.

Every command that takes a config prepares it through ``ftk.core.lifecycle.prepare`` first.
Plugins add commands of their own through the ``register_commands`` hook.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ftk.core.registry import Command

#: name -> (module under ftk.commands, one-line help), in the order ``ftk --help`` lists them.
CORE_COMMANDS = {
    "train": ("train", "fine-tune a model as a config says"),
    "preprocess": ("preprocess", "tokenize, mask and cache the datasets of a config"),
    "validate": ("validate", "check a config and print it with defaults filled in"),
    "eval": ("eval", "eval loss and perplexity of a model on the config's eval set"),
    "generate": ("generate", "generate a reply to a prompt with the trained model"),
    "plugins": ("plugins", "list loaded plugins and their hooks"),
    "completion": ("completion", "print a shell completion script"),
}


def _deferred(module_name: str, function: str) -> Callable[..., Any]:
    """``ftk.commands.<module_name>.<function>``, its module imported only when it is called.

    ``ftk --help`` then imports no command module, and ``ftk validate`` only its own: a command's
    module may import torch or transformers, which take seconds.
    """

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(f"ftk.commands.{module_name}"), function)(*args)

    call.__name__ = call.__qualname__ = function
    return call


def core_commands() -> list[Command]:
    """The built-in commands as registry entries, like the ones plugins register."""
    return [
        Command(name, help_text, _deferred(module, "add_arguments"), _deferred(module, "run"), plugin="ftk")
        for name, (module, help_text) in CORE_COMMANDS.items()
    ]
