"""The choice between ftk's built-in chat templates and the tokenizer's own.

``chat_template`` is ``tokenizer_default`` (or unset: the tokenizer's template), ``jinja`` (the
text or file in ``chat_template_jinja``), a built-in name (the table is in
``ftk.prompt_strategies.template_table``, one module per family group), or
``tokenizer_default_fallback_<built-in name>``: the tokenizer's template when it has one, else that
built-in (as axolotl accepts it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic_core import PydanticCustomError

from ftk.core.errors import FtkError, suggest
from ftk.prompt_strategies.template_table import BUILTIN_TEMPLATES, END_OF_TURN

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "BUILTIN_TEMPLATES",
    "FALLBACK_PREFIX",
    "TEMPLATE_CHOICES",
    "builtin_end_of_turn",
    "known_template_name",
    "resolve_chat_template",
    "template_name_problem",
]

logger = logging.getLogger(__name__)

#: ``tokenizer_default_fallback_chatml``: the tokenizer's template, else the built-in ``chatml``.
FALLBACK_PREFIX = "tokenizer_default_fallback_"

TEMPLATE_CHOICES = ("tokenizer_default", "jinja")


def template_name_problem(name: str | None) -> str | None:
    """Why ``name`` is not a ``chat_template`` value ftk knows (with a "did you mean"), or None."""
    if name is None or name in TEMPLATE_CHOICES or name in BUILTIN_TEMPLATES:
        return None
    if "{%" in name or "{{" in name:
        return "holds template text; set chat_template: jinja and put the text in chat_template_jinja"
    if name.startswith(FALLBACK_PREFIX):
        fallback = name[len(FALLBACK_PREFIX) :]
        if fallback in BUILTIN_TEMPLATES:
            return None
        return (
            f"unknown fallback template {fallback!r} in {name!r}{suggest(fallback, list(BUILTIN_TEMPLATES))}; "
            f"after {FALLBACK_PREFIX} name one of {', '.join(BUILTIN_TEMPLATES)}"
        )
    return (
        f"unknown template {name!r}{suggest(name, [*TEMPLATE_CHOICES, *BUILTIN_TEMPLATES])}; choose "
        f"tokenizer_default, jinja or a built-in: {', '.join(BUILTIN_TEMPLATES)}"
    )


def known_template_name(name: str | None) -> str | None:
    """``name`` unchanged when ftk knows it; a pydantic error (shown as a config error) otherwise."""
    problem = template_name_problem(name)
    if problem is not None:
        raise PydanticCustomError("chat_template", problem)
    return name


def _tokenizer_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    return template if isinstance(template, str) else template["default"]


def resolve_chat_template(name: str | None, jinja: str | None, tokenizer: PreTrainedTokenizerBase) -> str:
    """The Jinja text for ``chat_template`` (+ ``chat_template_jinja``) with this tokenizer.

    ``None`` or ``tokenizer_default`` take the tokenizer's own template; a built-in name takes
    ours; ``jinja`` takes ``jinja`` as a file path when such a file exists, else as template text;
    ``tokenizer_default_fallback_<name>`` the tokenizer's template, else the built-in ``<name>``.
    """
    if name in (None, "tokenizer_default"):
        template = _tokenizer_template(tokenizer)
        if template is None:
            raise FtkError(
                "chat_template: the tokenizer has no chat template; set chat_template to one of "
                f"{', '.join(BUILTIN_TEMPLATES)} or 'jinja'"
            )
        return template
    if name == "jinja":
        if not jinja:
            raise FtkError("chat_template_jinja: required when chat_template is 'jinja'")
        path = Path(jinja)
        return path.read_text(encoding="utf-8") if "{" not in jinja and path.is_file() else jinja
    if name in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name]
    fallback = name[len(FALLBACK_PREFIX) :] if name.startswith(FALLBACK_PREFIX) else None
    if fallback in BUILTIN_TEMPLATES:
        template = _tokenizer_template(tokenizer)
        if template is not None:
            return template
        logger.warning("chat_template: the tokenizer has no chat template; using the built-in %s", fallback)
        return BUILTIN_TEMPLATES[fallback]
    raise FtkError(f"chat_template: {template_name_problem(name)}")


def builtin_end_of_turn(name: str | None, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The end-of-turn string of the built-in template ``name`` when it names one (the templates
    whose replies end with more than one control token) and the template is the one in use."""
    if name is not None and name.startswith(FALLBACK_PREFIX):
        if _tokenizer_template(tokenizer) is not None:
            return None
        name = name[len(FALLBACK_PREFIX) :]
    return END_OF_TURN.get(name) if name is not None else None
