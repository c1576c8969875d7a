"""Reading chat rows: messages with canonical roles, tool calls and reasoning, and tool definitions.

Used by ``type: chat_template``; a row that cannot be read raises ``RowError`` naming the field.
A message's role and content must be set: a null (or missing) content is an error, except in an
assistant message that has tool calls or reasoning instead (its content is then "").  An empty
string is text like any other.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationInfo
from pydantic_core import PydanticCustomError

from ftk.core.errors import RowError, suggest
from ftk.prompt_strategies.fields import missing_field

if TYPE_CHECKING:
    from ftk.prompt_strategies.chat_template import ChatTemplateOptions

CANONICAL_ROLES = ("system", "user", "assistant", "tool")
#: Names read as roles when the dataset has no ``roles:`` mapping (axolotl's defaults: ShareGPT's).
DEFAULT_ROLE_ALIASES = {"human": "user", "gpt": "assistant"}
#: Message properties passed to the template besides role and content (mappable by name).
MESSAGE_PROPERTIES = ("reasoning_content", "tool_calls", "name", "tool_call_id")
#: Names a message's reasoning may have, as transformers reads them.
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
REASONING = "reasoning_content"
#: Names under which every message's reasoning goes to the template (and is tracked there).
TRACKED_REASONING_KEYS = (None, "reasoning_content", "thinking")


def known_roles_to_train(value: list[str], info: ValidationInfo) -> list[str]:
    """Validator of ``roles_to_train``: roles after the ``roles:`` mapping, not names in the data.

    A message's role is compared after mapping, so a name that is not a role (a typo, or a data
    name such as ``gpt``) would silently train nothing.
    """
    mapping: dict[str, list[str]] = info.data.get("roles") or {}
    if info.data.get("roles") is None:
        mapping = {
            role: [alias for alias, to in DEFAULT_ROLE_ALIASES.items() if to == role]
            for role in CANONICAL_ROLES
        }
    known = list(dict.fromkeys([*CANONICAL_ROLES, *mapping]))
    for role in value:
        if role in known:
            continue
        mapped = next((canonical for canonical, aliases in mapping.items() if role in aliases), None)
        if mapped is not None:
            text = f"{role!r} is a name in the data; roles_to_train takes the role it maps to, {mapped!r}"
        else:
            text = f"unknown role {role!r}{suggest(role, known)}; roles are {', '.join(known)}"
        raise PydanticCustomError("unknown_role", "{text}", {"text": text})
    return value


#: axolotl's older dataset keys and the message property each names.
LEGACY_MESSAGE_FIELDS = {"message_field_role": "role", "message_field_content": "content"}


def merge_message_fields(data: Any) -> Any:
    """Before-validator of the options: the older names and ``field_thinking`` into the mapping.

    ``message_field_role: from`` is ``message_property_mappings: {role: from}`` (and likewise
    ``message_field_content``); ``field_thinking: x`` is ``{reasoning_content: x}``.  Both forms
    naming different keys is an error.
    """
    if not isinstance(data, dict):
        return data
    given = data.get("message_property_mappings")
    if given is not None and not isinstance(given, dict):
        return data  # the field's own validation reports it
    mapping = dict(given or {})
    merged = False
    for key, prop in (*LEGACY_MESSAGE_FIELDS.items(), ("field_thinking", REASONING)):
        value = data.get(key)
        if not isinstance(value, str):
            continue
        if prop in mapping and mapping[prop] != value:
            text = (
                f"{key}: {value!r} conflicts with message_property_mappings.{prop}: {mapping[prop]!r} "
                f"(both name the message key of the {prop}; keep one)"
            )
            raise PydanticCustomError("conflicting_fields", "{text}", {"text": text})
        mapping[prop] = value
        merged = True
    return {**data, "message_property_mappings": mapping} if merged else data


def _role_lookup(options: ChatTemplateOptions) -> dict[str, str]:
    """Role name in the data -> canonical role: ``roles:`` when given, else ShareGPT's names too."""
    lookup = {role: role for role in CANONICAL_ROLES}
    if options.roles is None:
        lookup.update(DEFAULT_ROLE_ALIASES)
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
        # The template reads reasoning as reasoning_content and thinking; another name is added.
        thinking_key = options.template_thinking_key
        self.template_thinking_key = thinking_key if thinking_key not in TRACKED_REASONING_KEYS else None
        others = [prop for prop in mapping if prop not in ("role", "content", REASONING)]
        properties = [prop for prop in MESSAGE_PROPERTIES if prop != REASONING]
        self.properties = [(prop, mapping.get(prop, prop)) for prop in dict.fromkeys(properties + others)]
        self.tool_calls_key = mapping.get("tool_calls", "tool_calls")

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        options = self.options
        messages = row.get(options.field_messages)
        if messages is None:
            raise missing_field(row, options.field_messages, "field_messages")
        if not isinstance(messages, list) or not messages:
            got = "an empty list" if isinstance(messages, list) else type(messages).__name__
            raise RowError(f"{options.field_messages}: must be a non-empty list of messages, got {got}")
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

    def _has_other_output(self, message: dict[str, Any]) -> bool:
        """Whether an assistant message says something besides its content: tool calls or reasoning."""
        keys = (self.tool_calls_key, *self.reasoning_keys)
        return any(message.get(key) not in (None, "", []) for key in keys)

    def _missing(self, message: dict[str, Any], where: str, key: str) -> RowError:
        """``messages[1].content: missing or null``, or which keys the messages have instead."""
        if key not in message:
            keys = ", ".join(map(str, message)) or "none"
            return RowError(
                f"{where}.{key}: missing: the messages have no such key (keys: {keys}); "
                "set message_property_mappings: {role: <key>, content: <key>}"
            )
        if key == self.content_key:
            return RowError(
                f"{where}.{key}: missing or null (every message needs text; an assistant message may "
                "have tool_calls instead)"
            )
        return RowError(f"{where}.{key}: missing or null")

    def _message(self, message: Any, where: str) -> dict[str, Any]:
        role_key, content_key = self.role_key, self.content_key
        if not isinstance(message, dict):
            raise RowError(f"{where}: must be a mapping with {role_key!r} and {content_key!r}")
        raw_role = message.get(role_key)
        if raw_role is None:
            raise self._missing(message, where, role_key)
        if raw_role not in self.roles:
            raise RowError(f"{where}.{role_key}: unknown role {raw_role!r}; map it with `roles:`")
        content = message.get(content_key)
        if content is None:
            if not (self.roles[raw_role] == "assistant" and self._has_other_output(message)):
                raise self._missing(message, where, content_key)
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
                if self.template_thinking_key is not None:
                    result[self.template_thinking_key] = reasoning
                break
        for prop, key in self.properties:
            value = message.get(key)
            if value is not None:
                result[prop] = _tool_calls(value, f"{where}.{key}") if prop == "tool_calls" else value
        return result
