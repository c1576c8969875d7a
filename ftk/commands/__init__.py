"""The commands that ship with ftk, each a module with ``add_arguments(parser)`` and ``run(args)``.

Every command that takes a config prepares it through ``ftk.core.lifecycle.prepare`` first.
Plugins add commands of their own through the ``register_commands`` hook.
"""

from __future__ import annotations

import importlib

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


def core_commands() -> list[Command]:
    """The built-in commands as registry entries, like the ones plugins register."""
    commands = []
    for name, (module_name, help_text) in CORE_COMMANDS.items():
        module = importlib.import_module(f"ftk.commands.{module_name}")
        commands.append(Command(name, help_text, module.add_arguments, module.run, plugin="ftk"))
    return commands
