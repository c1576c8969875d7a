"""Render a chat template once and learn exactly where each message's content landed.

Each message's content is handed to the template as a ``TrackedText``: a ``str`` subclass that
remembers which message (and which characters of it) it holds.  Concatenation (``+`` and ``~``),
output (``{{ ... }}``), ``trim``/``strip``, slicing and ``split`` keep that record, so the
rendered chunks say which characters came from which message, with no string search and no
placeholder.  A template that loses the record (for example with ``replace`` or ``format``)
still renders correctly; the caller locates such a message's content by search, bounded by its
neighbours.

The template is compiled on an overlay of the Jinja environment that transformers builds for
``apply_chat_template`` (reached through a private helper of transformers), so it sees the same
globals, filters and extensions.  Only the joining differs: Jinja joins ``~`` operands and block
bodies into a plain ``str``, which would drop the record, so the overlay concatenates instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import Template
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from transformers.utils.chat_template_utils import _compile_jinja_template

# A segment of text: (length, message index or -1 for template text, offset in that message's content).
Segment = tuple[int, int, int]


class TrackedText(str):
    """Text that knows, character range by character range, which message content it came from."""

    segments: tuple[Segment, ...]

    def __new__(cls, text: str, segments: tuple[Segment, ...]) -> TrackedText:
        obj = super().__new__(cls, text)
        obj.segments = segments
        return obj

    @classmethod
    def content(cls, text: str, message_index: int) -> TrackedText:
        """The whole content of message ``message_index`` (a zero-length segment when empty)."""
        return cls(text, ((len(text), message_index, 0),))

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
        for length, message, offset in self.segments:
            seg_start, seg_end = position, position + length
            lo, hi = max(seg_start, start), min(seg_end, end)
            if lo < hi or (length == 0 and start <= seg_start <= end):
                kept.append((hi - lo if lo < hi else 0, message, offset + (lo - seg_start if lo < hi else 0)))
            position = seg_end
        return TrackedText(str.__getitem__(self, slice(start, end)), tuple(kept))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice) and key.step in (None, 1):
            start, end, _ = key.indices(len(self))
            return self.slice(start, max(start, end))
        return str.__getitem__(self, key)

    def strip(self, chars: str | None = None) -> TrackedText:
        left = len(self) - len(str.lstrip(self, chars))
        return self.slice(left, left + len(str.strip(self, chars)))

    def lstrip(self, chars: str | None = None) -> TrackedText:
        return self.slice(len(self) - len(str.lstrip(self, chars)), len(self))

    def rstrip(self, chars: str | None = None) -> TrackedText:
        return self.slice(0, len(str.rstrip(self, chars)))

    def split(self, sep: str | None = None, maxsplit: int = -1) -> list[Any]:
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
    return ((len(text), -1, 0),) if text else ()


def _concatenate(values: tuple[Any, ...]) -> str:
    """What ``a ~ b ~ c`` computes, keeping ``TrackedText`` records."""
    result = ""
    for value in values:
        result = result + (value if isinstance(value, str) else str(value))
    return result


class _TrackingCodeGenerator(CodeGenerator):
    """Jinja's code generator, except that ``~`` concatenates instead of joining."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.ftk_concatenate((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


@lru_cache(maxsize=32)
def compile_tracking_template(template: str) -> Template:
    """``template`` compiled in transformers' chat-template environment, with tracking ``~``."""
    environment = _compile_jinja_template(template).environment.overlay()
    environment.code_generator_class = _TrackingCodeGenerator
    environment.ftk_concatenate = _concatenate
    # Block bodies (macros, call blocks such as {% generation %}, {% set %} blocks) are joined
    # with environment.concat: make that keep the record too.
    environment.concat = lambda parts: _concatenate(tuple(parts))
    return environment.from_string(template)


@dataclass(frozen=True)
class ContentSpan:
    """Characters ``start:end`` of the rendered text hold message ``message`` (from ``offset`` on)."""

    start: int
    end: int
    message: int
    offset: int


def render_with_content_spans(
    template: str, messages: list[dict[str, Any]], **template_kwargs: Any
) -> tuple[str, list[ContentSpan]]:
    """Render ``messages`` with ``template``; return the text and every tracked content span, in order."""
    tracked = [
        {**message, "content": TrackedText.content(message["content"], index)}
        for index, message in enumerate(messages)
    ]
    compiled = compile_tracking_template(template)
    chunks: list[str] = []
    spans: list[ContentSpan] = []
    position = 0
    for chunk in compiled.generate(messages=tracked, **template_kwargs):
        for length, message, offset in _segments_of(chunk):
            if message >= 0:
                spans.append(ContentSpan(position, position + length, message, offset))
            position += length
        chunks.append(str.__str__(chunk) if isinstance(chunk, TrackedText) else chunk)
    return "".join(chunks), spans
