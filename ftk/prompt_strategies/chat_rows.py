"""Reading chat rows: messages with canonical roles, tool calls and reasoning, and tool definitions.

Used by ``type: chat_template``; a row that cannot be read raises ``RowError`` naming the field.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ftk.core.errors import RowError

if TYPE_CHECKING:
    from ftk.prompt_strategies.chat_template import ChatTemplateOptions

CANONICAL_ROLES = ("system", "user", "assistant", "tool")
#: Message properties passed to the template besides role and content (mappable by name).
MESSAGE_PROPERTIES = ("reasoning_content", "tool_calls", "name", "tool_call_id")
#: Names a message's reasoning may have, as transformers reads them.
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
REASONING = "reasoning_content"


def _role_lookup(options: ChatTemplateOptions) -> dict[str, str]:
    lookup = {role: role for role in CANONICAL_ROLES}
    for canonical, aliases in (options.roles or {}).items():
        for alias in aliases:
            lookup[alias] = canonical
    return lookup


def _parse_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``call`` whose JSON-string ``arguments`` (at top level or under ``function``) are objects."""
    call = dict(call)
    for holder in (call, call.get("function")):
        if isinstance(holder, dict) and isinstance(holder.get("arguments"), str):
            try:
                parsed = json.loads(holder["arguments"])
            except ValueError:
                continue
            if isinstance(parsed, dict):
                if holder is not call:
                    holder = call["function"] = dict(holder)
                holder["arguments"] = parsed
    return call


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(call, dict) for call in value):
        raise RowError(f"{where}: must be a list of tool calls (mappings)")
    return [_parse_arguments(call) for call in value]


def read_tools(row: dict[str, Any], field: str) -> list[dict[str, Any]] | None:
    """The row's tool definitions (None when the row has none)."""
    tools = row.get(field)
    if tools is None:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError as exc:
            raise RowError(f"{field}: not valid JSON: {exc}") from exc
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise RowError(f"{field}: must be a list of tool definitions (mappings), or that list as JSON")
    return tools or None


class MessageReader:
    """Reads a row's messages into ``{"role", "content", "train", ...}`` dicts with canonical roles."""

    def __init__(self, options: ChatTemplateOptions):
        self.options = options
        self.roles = _role_lookup(options)
        mapping = options.message_property_mappings
        self.role_key = mapping.get("role", "role")
        self.content_key = mapping.get("content", "content")
        self.reasoning_keys = (mapping[REASONING],) if REASONING in mapping else REASONING_KEYS
        others = [prop for prop in mapping if prop not in ("role", "content", REASONING)]
        properties = [prop for prop in MESSAGE_PROPERTIES if prop != REASONING]
        self.properties = [(prop, mapping.get(prop, prop)) for prop in dict.fromkeys(properties + others)]

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        options = self.options
        messages = row.get(options.field_messages)
        if messages is None:
            raise RowError(f"{options.field_messages}: missing")
        if not isinstance(messages, list) or not messages:
            raise RowError(f"{options.field_messages}: must be a non-empty list of messages")
        result = []
        for index, message in enumerate(messages):
            result.append(self._message(message, f"{options.field_messages}[{index}]"))
        if options.drop_system_message:
            result = [message for message in result if message["role"] != "system"]
        if options.default_system_message is not None and (not result or result[0]["role"] != "system"):
            result.insert(0, {"role": "system", "content": options.default_system_message, "train": None})
        if not result:
            raise RowError(f"{options.field_messages}: no messages left after drop_system_message")
        return result

    def _message(self, message: Any, where: str) -> dict[str, Any]:
        role_key, content_key = self.role_key, self.content_key
        if not isinstance(message, dict):
            raise RowError(f"{where}: must be a mapping with {role_key!r} and {content_key!r}")
        raw_role = message.get(role_key)
        if raw_role not in self.roles:
            raise RowError(f"{where}.{role_key}: unknown role {raw_role!r}; map it with `roles:`")
        content = message.get(content_key)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise RowError(f"{where}.{content_key}: must be text, got {type(content).__name__}")
        field_training = self.options.message_field_training
        train = message.get(field_training) if field_training else None
        result = {"role": self.roles[raw_role], "content": content, "train": train}
        if len(message) <= 1 + (content_key in message):  # nothing besides role and content
            return result
        for key in self.reasoning_keys:
            reasoning = message.get(key)
            if reasoning is not None:
                if not isinstance(reasoning, str):
                    raise RowError(f"{where}.{key}: must be text, got {type(reasoning).__name__}")
                result[REASONING] = reasoning
                break
        for prop, key in self.properties:
            value = message.get(key)
            if value is not None:
                result[prop] = _tool_calls(value, f"{where}.{key}") if prop == "tool_calls" else value
        return result
