"""Registers the prompt strategies that ship with ftk."""

from __future__ import annotations

from ftk.core.hookspecs import hookimpl
from ftk.core.registry import StrategyRegistrar
from ftk.prompt_strategies import chat_template


@hookimpl
def register_prompt_strategies(register: StrategyRegistrar) -> None:
    """Offer ``type: chat_template``."""
    register("chat_template", chat_template.build, chat_template.ChatTemplateOptions)
