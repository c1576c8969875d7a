"""Registers the prompt strategies that ship with ftk."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftk.core.hookspecs import hookimpl
from ftk.core.registry import Register
from ftk.prompt_strategies import (
    alpaca,
    chat_defaults,
    chat_template,
    completion,
    input_output,
    instruct_styles,
)
from ftk.prompt_strategies.templates import template_name_problem

if TYPE_CHECKING:
    from ftk.core.config.schema import FtkConfig


@hookimpl
def register_config_sections(register: Register) -> None:
    """Add the top-level defaults of the chat_template dataset keys (``eot_tokens``, ...)."""
    register(chat_defaults.SECTION, chat_defaults.ChatTemplateDefaults, flat=True)


@hookimpl
def register_prompt_strategies(register: Register) -> None:
    """Offer ``type: chat_template``, ``alpaca``, ``completion``, ``input_output`` and axolotl's
    instruction formats (``alpaca:chat``, ``jeopardy``, ...: ``ftk.prompt_strategies.instruct_styles``)."""
    register("chat_template", chat_template.build, chat_template.ChatTemplateOptions)
    register("alpaca", alpaca.build, alpaca.AlpacaOptions)
    register("completion", completion.build, completion.CompletionOptions)
    register("input_output", input_output.build, input_output.InputOutputOptions)
    for name in instruct_styles.strategy_names():
        options = alpaca.AlpacaColumns if name.startswith("alpaca") else None
        register(name, instruct_styles.builder(name), options)


@hookimpl
def config_problems(cfg: FtkConfig) -> list[tuple[tuple[str], str]]:
    """A top-level ``chat_template`` that names no template ftk knows (caught at validation)."""
    problem = template_name_problem(cfg.chat_template)
    return [(("chat_template",), problem)] if problem else []
