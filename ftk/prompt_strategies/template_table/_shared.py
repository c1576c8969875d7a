"""Jinja pieces shared by the built-in templates, and a helper to write text into Jinja safely."""

from __future__ import annotations

import re

# ftk's chat_template strategy decides whether a template renders reasoning by searching its text
# for these words; prose that a template writes (a default system message) must not mislead it.
_REASONING_WORDS = re.compile(r"reasoning_content|thinking")


def literal(text: str) -> str:
    """``text`` as a Jinja string literal (quotes, backslashes and line breaks escaped).

    The words ftk's strategy looks for to detect reasoning support are written with an escaped
    letter, so that a default system message that mentions "thinking" does not count.
    """
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    escaped = _REASONING_WORDS.sub(
        lambda word: word.group()[:-1] + f"\\x{ord(word.group()[-1]):02x}", escaped
    )
    return "'" + escaped + "'"


def no_tools(name: str) -> str:
    """Jinja that stops with a clear error when a conversation has tools, documents, tool calls or
    tool results: templates that do not implement the family's tool format say so."""
    message = literal(
        f"chat_template {name} (built into ftk) renders text conversations only, without tools, tool calls, "
        "tool results or documents; use chat_template: tokenizer_default or jinja for those"
    )
    return (
        "{%- if tools or documents -%}{{- raise_exception(" + message + ") -}}{%- endif -%}"
        "{%- for m in messages -%}"
        "{%- if m['tool_calls'] or m['role'] in ['tool', 'ipython'] -%}{{- raise_exception("
        + message
        + ") -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


#: Sets ``system`` (the first message's content, or none) and ``turns`` (the other messages).
SPLIT_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
)


def alternation(name: str, strict_roles: bool = True) -> str:
    """Jinja (inside a loop over ``turns``) that stops unless user and assistant alternate from user.

    With ``strict_roles`` any other role is an error too; without it only the position of the
    user turns is checked, as the Gemma 3 and Cohere templates do.
    """
    check = (
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        "{{- raise_exception("
        + literal(f"{name} template: user and assistant turns must alternate, starting with user")
        + ") -}}{%- endif -%}"
    )
    if not strict_roles:
        return check
    return (
        "{%- if message['role'] not in ['user', 'assistant'] -%}"
        "{{- raise_exception("
        + literal(f"{name} template: only user and assistant turns (and a first system message), got ")
        + " ~ message['role']) -}}"
        "{%- endif -%}" + check
    )
