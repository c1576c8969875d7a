"""Registers the prompt strategies that ship with ftk."""

from __future__ import annotations

from ftk.core.hookspecs import hookimpl
from ftk.core.registry import StrategyRegistrar
from ftk.prompt_strategies import alpaca, chat_template, completion, input_output


@hookimpl
def register_prompt_strategies(register: StrategyRegistrar) -> None:
    """Offer ``type: chat_template``, ``alpaca``, ``completion`` and ``input_output``."""
    register("chat_template", chat_template.build, chat_template.ChatTemplateOptions)
    register("alpaca", alpaca.build, alpaca.AlpacaOptions)
    register("completion", completion.build, completion.CompletionOptions)
    register("input_output", input_output.build, input_output.InputOutputOptions)
