"""Render a chat template once and learn exactly where each message's text landed.

Each message's content (and its reasoning, under ``reasoning_content`` and the alias ``thinking``)
is handed to the template as a ``TrackedText``: a ``str`` subclass that remembers which message,
which field and which characters of it it holds.  Concatenation (``+`` and ``~``), output
(``{{ ... }}``), ``trim``/``strip``, slicing and ``split`` keep that record, so the rendered chunks
say which characters came from which message, with no string search and no placeholder.  A
template that loses the record (for example with ``replace`` or ``format``) still renders
correctly; the caller locates such a message's content by search, bounded by its neighbours.

Data that is not a message's text is tracked too, as *data*: every string inside a message's
``tool_calls`` (field ``tool_calls``, owned by that message), every string inside the ``tools``
definitions (field ``tools``, owned by no message, index -1), and whatever the ``tojson`` filter
prints (field ``json``, owned by the one message whose strings it serialises, else -1).  Callers
tokenize data as plain text where it holds a control-token string, so a tool argument cannot forge
a turn either.

The template is compiled on an overlay of the Jinja environment that transformers builds for
``apply_chat_template`` (reached through a private helper of transformers), so it sees the same
globals, filters and extensions.  Only the joining differs: Jinja joins ``~`` operands and block
bodies into a plain ``str``, which would drop the record, so the overlay concatenates instead;
``tojson`` marks its output as data; and ``{% generation %}`` blocks (which only mark assistant
text for transformers' assistant mask) render their body directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import Template
from jinja2.compiler import CodeGenerator, Frame
from jinja2.ext import Extension
from jinja2.nodes import Concat, Node, Scope
from jinja2.parser import Parser

#: A run of text: ``(length, message index or -1, field, offset in that field's text)``.  Template
#: text is ``(length, -1, "", 0)``.
Segment = tuple[int, int, str, int]

#: Message keys tracked as the message's own text, and the field name their spans carry.
TEXT_FIELDS: dict[str, str] = {
    "content": "content",
    "reasoning_content": "reasoning_content",
    "thinking": "reasoning_content",
}
#: Span fields that are data (tool calls, tool definitions, JSON), not a message's text.
DATA_FIELDS = frozenset({"tool_calls", "tools", "json"})


class TrackedText(str):
    """Text that knows, character range by character range, which message field it came from."""

    segments: tuple[Segment, ...]

    def __new__(cls, text: str, segments: tuple[Segment, ...]) -> TrackedText:
        obj = super().__new__(cls, text)
        obj.segments = segments
        return obj

    @classmethod
    def content(cls, text: str, message_index: int, field: str = "content") -> TrackedText:
        """The whole text of ``field`` of message ``message_index`` (a zero-length segment when empty)."""
        return cls(text, ((len(text), message_index, field, 0),))

    def __str__(self) -> str:  # Jinja outputs str(value): keep the record
        return self

    def __add__(self, other: object) -> Any:
        if not isinstance(other, str):
            return NotImplemented
        return TrackedText(str.__add__(self, other), self.segments + _segments_of(other))

    def __radd__(self, other: object) -> Any:
        if not isinstance(other, str):
            return NotImplemented
        return TrackedText(str.__add__(other, self), _segments_of(other) + self.segments)

    def slice(self, start: int, end: int) -> TrackedText:
        """Characters ``start:end`` with their origins."""
        kept: list[Segment] = []
        position = 0
        for length, message, field, offset in self.segments:
            seg_start, seg_end = position, position + length
            lo, hi = max(seg_start, start), min(seg_end, end)
            if lo < hi:
                kept.append((hi - lo, message, field, offset + lo - seg_start))
            elif field and seg_start <= lo == hi <= seg_end and (length == 0 or start == end):
                # Nothing of this text is left (an empty text, or a text trimmed to nothing): keep
                # a zero-length mark of where it is, so the message is still located.
                kept.append((0, message, field, offset + lo - seg_start))
            position = seg_end
        return TrackedText(str.__getitem__(self, slice(start, end)), tuple(kept))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice) and key.step in (None, 1):
            start, end, _ = key.indices(len(self))
            return self.slice(start, max(start, end))
        return str.__getitem__(self, key)

    def strip(self, chars: str | None = None) -> TrackedText:
        """``str.strip`` that keeps the record."""
        left = len(self) - len(str.lstrip(self, chars))
        return self.slice(left, left + len(str.strip(self, chars)))

    def lstrip(self, chars: str | None = None) -> TrackedText:
        """``str.lstrip`` that keeps the record."""
        return self.slice(len(self) - len(str.lstrip(self, chars)), len(self))

    def rstrip(self, chars: str | None = None) -> TrackedText:
        """``str.rstrip`` that keeps the record."""
        return self.slice(0, len(str.rstrip(self, chars)))

    def split(self, sep: str | None = None, maxsplit: int = -1) -> list[Any]:
        """``str.split`` that keeps the record (with an explicit separator)."""
        if sep is None:
            return str.split(self, sep, maxsplit)
        pieces, start = [], 0
        for piece in str.split(self, sep, maxsplit):
            pieces.append(self.slice(start, start + len(piece)))
            start += len(piece) + len(sep)
        return pieces


def _segments_of(text: str) -> tuple[Segment, ...]:
    if isinstance(text, TrackedText):
        return text.segments
    return ((len(text), -1, "", 0),) if text else ()


def _concatenate(values: tuple[Any, ...]) -> str:
    """What ``a ~ b ~ c`` computes, keeping ``TrackedText`` records (a plain ``str`` when none is tracked)."""
    texts = []
    tracked = False
    for value in values:
        if type(value) is not str:
            if isinstance(value, TrackedText):
                tracked = True
            elif not isinstance(value, str):
                value = str(value)
        texts.append(value)
    if not tracked:
        return "".join(texts)
    segments: list[Segment] = []
    for text in texts:
        if isinstance(text, TrackedText):
            segments.extend(text.segments)
        elif text:
            if segments and segments[-1][1] == -1 and not segments[-1][2]:
                # Runs of template text become one segment.
                segments[-1] = (segments[-1][0] + len(text), -1, "", 0)
            else:
                segments.append((len(text), -1, "", 0))
    return TrackedText("".join(texts), tuple(segments))


def track_data(value: Any, message_index: int, field: str) -> Any:
    """``value`` with every string in it (dict keys included) tracked as data of ``field``."""
    if isinstance(value, str):
        return TrackedText(value, ((len(value), message_index, field, 0),))
    if isinstance(value, dict):
        return {
            track_data(key, message_index, field): track_data(item, message_index, field)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [track_data(item, message_index, field) for item in value]
    return value


def _owners(value: Any, found: set[int]) -> None:
    """Add to ``found`` the messages whose tracked strings ``value`` holds."""
    if isinstance(value, TrackedText):
        found.update(message for _, message, _, _ in value.segments)
    elif isinstance(value, dict):
        for key, item in value.items():
            _owners(key, found)
            _owners(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _owners(item, found)


def _tracking_tojson(original: Callable[..., str]) -> Callable[..., str]:
    """Wrap a ``tojson`` filter so that its output is tracked as data (field ``json``)."""

    def tojson(value: Any, *args: Any, **kwargs: Any) -> str:
        text = original(value, *args, **kwargs)
        if not text:
            return text
        owners: set[int] = set()
        _owners(value, owners)
        owners.discard(-1)
        owner = owners.pop() if len(owners) == 1 else -1
        return TrackedText(text, ((len(text), owner, "json", 0),))

    return tojson


class _TrackingCodeGenerator(CodeGenerator):
    """Jinja's code generator, except that ``~`` concatenates instead of joining."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.ftk_concatenate((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class _InlineGeneration(Extension):
    """``{% generation %}...{% endgeneration %}`` rendered as its body, in a scope of its own.

    transformers' extension for the tag calls the body as a macro to record where assistant text
    lands (for ``return_assistant_tokens_mask``); tracking needs no such record, and the macro
    call costs more than the rest of a ChatML turn.  The higher priority makes this parser win.
    """

    tags = {"generation"}
    priority = 1000

    def parse(self, parser: Parser) -> Node:
        """The tag's body, as a scope."""
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return Scope(body, lineno=lineno)


@lru_cache(maxsize=32)
def compile_tracking_template(template: str) -> Template:
    """``template`` compiled in transformers' chat-template environment, with tracking ``~``."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    environment = _compile_jinja_template(template).environment.overlay(extensions=[_InlineGeneration])
    environment.code_generator_class = _TrackingCodeGenerator
    environment.ftk_concatenate = _concatenate
    # Block bodies (macros, call blocks such as {% generation %}, {% set %} blocks) are joined
    # with environment.concat: make that keep the record too.
    environment.concat = lambda parts: _concatenate(tuple(parts))
    # The overlay shares the filters dict with transformers' environment: replace it, never edit it.
    environment.filters = {**environment.filters, "tojson": _tracking_tojson(environment.filters["tojson"])}
    return environment.from_string(template)


@dataclass(frozen=True)
class ContentSpan:
    """Characters ``start:end`` of the rendered text hold ``field`` of message ``message``.

    ``offset`` is where in that field's text the span begins (meaningful for the text fields
    ``content`` and ``reasoning_content``).  ``message`` is -1 for data that belongs to no message
    (tool definitions, JSON of several messages).
    """

    start: int
    end: int
    message: int
    offset: int
    field: str = "content"


def _tracked_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    tracked = dict(message)
    content = message.get("content")
    if isinstance(content, str):
        tracked["content"] = TrackedText(content, ((len(content), index, "content", 0),))
    if len(message) > 2:  # more than role and content
        for key, field in TEXT_FIELDS.items():
            value = message.get(key)
            if key != "content" and isinstance(value, str):
                tracked[key] = TrackedText.content(value, index, field)
        if message.get("tool_calls") is not None:
            tracked["tool_calls"] = track_data(message["tool_calls"], index, "tool_calls")
    return tracked


#: A tracked span as ``render_tracked`` reports it: ``(start, end, message, field, offset)``.
RawSpan = tuple[int, int, int, str, int]


def render_tracked(
    template: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    **template_kwargs: Any,
) -> tuple[str, list[RawSpan]]:
    """Render ``messages`` (and ``tools``) with ``template``; return the text and every tracked span.

    Spans come in text order as plain tuples (see ``RawSpan``); text fields and data (see the
    module docstring) are both reported, told apart by their field.  ``template_kwargs`` go to
    the template as variables (``add_generation_prompt``, special tokens, ...); ``documents`` is
    None, as transformers passes it.
    """
    tracked = [_tracked_message(message, index) for index, message in enumerate(messages)]
    compiled = compile_tracking_template(template)
    chunks: list[str] = []
    spans: list[RawSpan] = []
    position = 0
    generated = compiled.generate(
        messages=tracked,
        tools=track_data(tools, -1, "tools") if tools is not None else None,
        documents=None,
        **template_kwargs,
    )
    for chunk in generated:
        if isinstance(chunk, TrackedText):
            for length, message, field, offset in chunk.segments:
                if field:
                    spans.append((position, position + length, message, field, offset))
                position += length
            chunks.append(str.__str__(chunk))
        else:
            position += len(chunk)
            chunks.append(chunk)
    return "".join(chunks), spans


def render_with_content_spans(
    template: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    **template_kwargs: Any,
) -> tuple[str, list[ContentSpan]]:
    """``render_tracked``, with the spans as ``ContentSpan`` objects."""
    rendered, spans = render_tracked(template, messages, tools, **template_kwargs)
    return rendered, [
        ContentSpan(start, end, message, offset, field) for start, end, message, field, offset in spans
    ]
