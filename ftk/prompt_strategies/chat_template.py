"""``type: chat_template``: conversations rendered with a chat template, trained per role.

The conversation is rendered once with every message text tracked through the template
(``ftk.integrations.chat_template_spans``); message texts are tokenized as plain text (a user
cannot forge a turn), template text with its control tokens, each message text together with the
template text around it that has the same training, so the ids are the tokenizer's own for that
text (``ftk.prompt_strategies.chat_runs``). A trained message is trained from
where the template's generation prompt ends up to and including its end-of-turn token, which is
``eot_tokens`` or what the template itself ends an assistant turn with (found by rendering a
probe conversation). Tools, tool calls and reasoning are handed to the template; rows are read
by ``ftk.prompt_strategies.chat_rows``. docs/architecture.md ("Chat template masking") has the
rules in full: end-of-turn choice, reasoning, tools, system message options.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from jinja2 import TemplateError
from pydantic import Field, field_validator, model_validator

from ftk.core.config.schema import DatasetConfig, FtkConfig, StrictModel, TemplateTextOrPath
from ftk.core.errors import FtkError, RowError
from ftk.core.lm import IGNORE_INDEX
from ftk.integrations.chat_template_spans import DATA_FIELDS, compile_tracking_template, render_tracked
from ftk.prompt_strategies.chat_defaults import with_top_level_defaults
from ftk.prompt_strategies.chat_rows import (
    REASONING,
    REASONING_KEYS,
    MessageReader,
    known_roles_to_train,
    merge_message_fields,
    read_tools,
)
from ftk.prompt_strategies.chat_runs import RunPlan, attribute, chunk_text, plan_runs, unit_starts
from ftk.prompt_strategies.templates import builtin_end_of_turn, known_template_name, resolve_chat_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SCAFFOLD_CACHE_SIZE = 4096
_BASE_KEYS = frozenset({"role", "content", "train"})

_THINK_BLOCK = re.compile(r"\s*<think>(.*?)</think>\n*", re.DOTALL)
_NAMES_REASONING = re.compile(r"\b(?:reasoning_content|thinking)\b")
_PROBE = [
    {"role": "user", "content": "A"},
    {"role": "assistant", "content": "B"},
    {"role": "user", "content": "C"},
    {"role": "assistant", "content": "D"},
]


class ChatTemplateOptions(StrictModel):
    """Dataset keys understood by ``type: chat_template``."""

    field_messages: str = Field("messages", description="Column holding the list of messages.")
    field_tools: str = Field(
        "tools", description="Column holding the tool definitions (a list, or a JSON string of one)."
    )
    message_property_mappings: dict[str, str] = Field(
        default_factory=lambda: {"role": "role", "content": "content"},
        description=(
            "Where each message keeps its role, content and other properties (reasoning_content, "
            "tool_calls, name, tool_call_id, ...), e.g. {role: from, content: value}."
        ),
    )
    message_field_role: str | None = Field(
        None,
        description="Older name of message_property_mappings.role (axolotl's): the message key of the role.",
    )
    message_field_content: str | None = Field(
        None,
        description="Older name of message_property_mappings.content (axolotl's): the message key of the text.",
    )
    field_thinking: str | None = Field(
        None,
        description=(
            "Message key holding the reasoning (message_property_mappings.reasoning_content); "
            "default: reasoning_content, thinking or reasoning, whichever a message has."
        ),
    )
    template_thinking_key: str | None = Field(
        None,
        description=(
            "Name under which the template reads a message's reasoning; reasoning_content and thinking "
            "are always given, another name (e.g. reasoning) is added."
        ),
    )
    roles: dict[str, list[str]] | None = Field(
        None,
        description=(
            "Role names in the data for each canonical role, e.g. {user: [human]}; "
            "default: human is user and gpt is assistant."
        ),
    )
    roles_to_train: list[str] = Field(
        default_factory=lambda: ["assistant"], description="Roles whose messages are trained."
    )
    train_on_eos: Literal["turn", "all", "last", "none"] = Field(
        "turn",
        description="Which end-of-turn tokens are trained: after trained turns, all, the last, none.",
    )
    eot_tokens: list[str] | None = Field(
        None,
        description="End-of-turn tokens (strings, one token each); default: eos plus what the template ends turns with.",
    )
    train_on_reasoning: bool = Field(
        True, description="Train the reasoning (think block) of trained assistant messages."
    )
    message_field_training: str | None = Field(
        None, description="Message property that, when present, turns training on or off for it."
    )
    default_system_message: str | None = Field(
        None, description="System message for conversations that have none."
    )
    drop_system_message: bool = Field(
        False, description="Remove system messages (default_system_message, if set, is then used)."
    )
    chat_template: str | None = Field(None, description="Overrides the top-level chat_template.")
    chat_template_jinja: TemplateTextOrPath | None = Field(
        None, description="Overrides the top-level template text."
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra template variables, e.g. {enable_thinking: false}."
    )

    _known_template = field_validator("chat_template")(known_template_name)
    _known_roles = field_validator("roles_to_train")(known_roles_to_train)
    _merge_fields = model_validator(mode="before")(merge_message_fields)


class Chunk(NamedTuple):
    """A run of tokens with one origin, as ``ChatTemplateTokenizer.explain`` reports it.

    ``kind`` is ``template``, ``eot``, ``content``, ``reasoning_content`` or ``data`` (data holding
    a control-token string, tokenized as text); ``message`` is the owning message, -1 for
    template text.  ``ids`` are the tokens that start in ``text``: a token that merges the end of
    one chunk with the start of the next (as the tokenizer merges the whole text) is listed once,
    with the chunk it starts in.
    """

    kind: str
    message: int
    text: str
    ids: list[int]
    trained: bool


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


class ChatTemplateTokenizer:
    """Turns rows into ``input_ids``, ``labels`` and ``attention_mask`` for one dataset's settings."""

    def __init__(self, options: ChatTemplateOptions, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig):
        self.options = options
        self.tokenizer = tokenizer
        self.train_on_inputs = cfg.train_on_inputs
        self.template_name = options.chat_template or cfg.chat_template
        self.template = resolve_chat_template(
            self.template_name,
            options.chat_template_jinja or cfg.chat_template_jinja,
            tokenizer,
        )
        self.read_messages = MessageReader(options)
        self.renders_reasoning = bool(_NAMES_REASONING.search(self.template))
        self.render_kwargs: dict[str, Any] = {
            **tokenizer.special_tokens_map,
            **options.chat_template_kwargs,
            "add_generation_prompt": False,
        }
        self.special_ids = set(tokenizer.all_special_ids) | {
            token_id for token_id, added in tokenizer.added_tokens_decoder.items() if added.special
        }
        special_texts = {added.content for added in tokenizer.added_tokens_decoder.values() if added.special}
        special_texts |= set(tokenizer.all_special_tokens)
        self._control_re = _alternation(special_texts)
        # Template text repeats from row to row ("<|im_end|>\n<|im_start|>assistant\n"): tokenize each once.
        self._scaffold_cache: dict[str, list[int]] = {}
        self._backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
        self.eot_ids = self._end_of_turn_ids()
        self._eot_re = _alternation(set(self.eot_ids))
        self.generation_prompt = self._generation_prompt()

    # --- what the template does, learnt once ------------------------------------------------------

    def _token_text(self, token_id: int) -> str:
        added = self.tokenizer.added_tokens_decoder.get(token_id)
        return added.content if added is not None else self.tokenizer.decode([token_id])

    def _end_of_turn_ids(self) -> dict[str, int]:
        """``{token text: id}`` of the end-of-turn tokens (see the module docstring)."""
        if self.options.eot_tokens is not None:
            found = {}
            for token in self.options.eot_tokens:
                ids = self.tokenizer.encode(token, add_special_tokens=False)
                if len(ids) != 1:
                    raise FtkError(
                        f"eot_tokens: {token!r} is not one token of this tokenizer (it encodes to {len(ids)})"
                    )
                found[token] = ids[0]
            return found
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        # A built-in whose replies end with several control tokens names its end of turn (Command A:
        # <|END_RESPONSE|><|END_OF_TURN_TOKEN|>); the probe would take the first of them.
        named = builtin_end_of_turn(self.template_name, self.tokenizer)
        named_ids = self.tokenizer.encode(named, add_special_tokens=False) if named else []
        if len(named_ids) == 1:
            ids.add(named_ids[0])
            return {self._token_text(token_id): token_id for token_id in sorted(ids)}
        for probe in (_PROBE, _PROBE[:2]):
            try:
                rendered, spans = render_tracked(self.template, probe, **self.render_kwargs)
            except Exception:  # a probe: any failure only means "learn nothing from it"
                continue
            ends = {message: end for _, end, message, field, _ in spans if field == "content"}
            starts = sorted((start, message) for start, _, message, field, _ in spans if field == "content")
            for index, message in enumerate(probe):
                if message["role"] != "assistant" or index not in ends:
                    continue
                end = ends[index]
                upper = next((s for s, m in starts if s >= end and m != index), len(rendered))
                window = self.tokenizer(rendered[end:upper], add_special_tokens=False)["input_ids"]
                ids.update(next(([i] for i in window if i in self.special_ids), []))
            break
        else:
            logger.warning("chat_template: the template cannot render a probe conversation; eot = eos only")
        return {self._token_text(token_id): token_id for token_id in sorted(ids)}

    def _generation_prompt(self) -> str:
        """What ``add_generation_prompt`` appends after a user turn ("" when unknown)."""
        compiled = compile_tracking_template(self.template)
        kwargs = {key: value for key, value in self.render_kwargs.items() if key != "add_generation_prompt"}
        probe = _PROBE[:1]
        try:
            without = compiled.render(
                messages=probe, tools=None, documents=None, add_generation_prompt=False, **kwargs
            )
            with_prompt = compiled.render(
                messages=probe, tools=None, documents=None, add_generation_prompt=True, **kwargs
            )
        except Exception:  # a probe: any failure only means "no generation prompt known"
            return ""
        return with_prompt[len(without) :] if with_prompt.startswith(without) else ""

    # --- rows -------------------------------------------------------------------------------------

    def _trains(self, message: dict) -> bool:
        if message.get("train") is not None:
            return bool(message["train"])
        return message["role"] in self.options.roles_to_train

    def __call__(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """Features for one dataset row."""
        return self.encode_messages(self.read_messages(row), read_tools(row, self.options.field_tools))

    def encode_messages(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> dict[str, list[int]]:
        """Features for a conversation of ``{"role", "content", "train", ...}`` messages (canonical roles).

        ``train`` may be None (the role decides, through ``roles_to_train``) or a bool; other keys
        (``reasoning_content``, ``tool_calls``, ...) go to the template as they are.
        """
        input_ids, labels = self._encode(messages, tools, None)
        return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}

    def explain(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[Chunk]:
        """The chunks ``encode_messages`` assembles its ids from, in order (for inspection and tests)."""
        record: list[Chunk] = []
        self._encode(messages, tools, record)
        return record

    def _prepare(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, int]]:
        """Messages as the template sees them, and ``{message: length}`` of think blocks left in contents."""
        prepared = []
        think_blocks: dict[int, int] = {}
        for index, message in enumerate(messages):
            content = message.get("content") or ""
            shown = {"role": message["role"], "content": content}
            reasoning = None
            if len(message) > 1 + ("content" in message) + ("train" in message):
                for key, value in message.items():
                    if value is not None and key not in _BASE_KEYS:
                        shown[key] = value
                reasoning = next((shown[key] for key in REASONING_KEYS if key in shown), None)
            if reasoning is None and shown["role"] == "assistant" and "<think>" in content:
                block = _THINK_BLOCK.match(content)
                if block is not None and self.renders_reasoning:
                    reasoning = block.group(1)
                    shown["content"] = content[block.end() :]
                elif block is not None:
                    think_blocks[index] = block.end()
            if reasoning is not None:
                shown = {"thinking": reasoning, **shown, REASONING: reasoning}
            prepared.append(shown)
        return prepared, think_blocks

    def _locate(
        self, rendered: str, spans: list[tuple], prepared: list[dict[str, Any]], think_blocks: dict[int, int]
    ) -> tuple[list[tuple[int, int, int, str]], list[tuple[int, int, int]]]:
        """Text pieces ``(start, end, message, field)`` and data ``(start, end, message)``, in text order."""
        pieces = []
        data = []
        for start, end, message, field, offset in spans:
            if field in DATA_FIELDS:
                data.append((start, end, message))
            elif field == "content" and message in think_blocks and offset < think_blocks[message]:
                split = min(end, start + think_blocks[message] - offset)
                pieces.append((start, split, message, REASONING))
                if split < end:
                    pieces.append((split, end, message, "content"))
            else:
                pieces.append((start, end, message, field))
        tracked = {span[2] for span in spans if span[3] == "content"}
        for index, message in enumerate(prepared):
            content = message["content"]
            if index in tracked or not content:
                continue
            # The template lost track of this content: search between its neighbours.
            around = [(s, e, m) for s, e, m, _ in pieces] + [d for d in data if d[2] >= 0]
            lower = max((e for _, e, m in around if 0 <= m < index), default=0)
            upper = min((s for s, _, m in around if m > index), default=len(rendered))
            start = rendered.find(content, lower, upper)
            if start < 0:
                raise RowError(
                    f"{self.options.field_messages}[{index}] ({message['role']}): the chat template does not "
                    "render this message's content verbatim, so its tokens cannot be located"
                )
            pieces.append((start, start + len(content), index, "content"))
            pieces.sort()
        return pieces, data

    def _batch_ids(self, texts: list[str], as_text: bool) -> list[list[int]]:
        """Token ids of ``texts``: control tokens recognised, or (``as_text``) tokenized as plain text.

        A fast tokenizer is called through its backend, as transformers itself does, when no
        truncation or padding is set on it (the wrapper's per-call overhead is a tenth of the
        preprocessing time); the result is the same.
        """
        backend = self._backend
        if backend is None or backend.truncation is not None or backend.padding is not None:
            return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=as_text)["input_ids"]
        before = backend.encode_special_tokens
        if before != as_text:
            backend.encode_special_tokens = as_text
        try:
            return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
        finally:
            if before != as_text:
                backend.encode_special_tokens = before

    def _batch_offsets(self, texts: list[str], as_text: bool) -> list[list[tuple[int, int]]]:
        """Character ``(start, end)`` of each token of ``texts``, tokenized as ``_batch_ids`` does."""
        backend = self._backend
        if backend is None or backend.truncation is not None or backend.padding is not None:
            return self.tokenizer(
                texts, add_special_tokens=False, split_special_tokens=as_text, return_offsets_mapping=True
            )["offset_mapping"]
        before = backend.encode_special_tokens
        backend.encode_special_tokens = as_text
        try:
            return [encoding.offsets for encoding in backend.encode_batch(texts, add_special_tokens=False)]
        finally:
            backend.encode_special_tokens = before

    def _scaffold_ids(self, texts: list[str]) -> None:
        """Tokenize template texts (control tokens recognised) into the cache."""
        cache = self._scaffold_cache
        missing = {text for text in texts if text not in cache}
        if missing:
            if len(cache) + len(missing) > SCAFFOLD_CACHE_SIZE:
                cache.clear()
                missing = set(texts)
            missing_list = list(missing)
            cache.update(zip(missing_list, self._batch_ids(missing_list, as_text=False), strict=True))

    def _encode(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, record: list[Chunk] | None
    ) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of a conversation; ``record`` (when given) receives the chunks."""
        prepared, think_blocks = self._prepare(messages)
        try:
            rendered, spans = render_tracked(self.template, prepared, tools, **self.render_kwargs)
        except TemplateError as exc:
            raise RowError(
                f"{self.options.field_messages}: the chat template rejects this conversation: {exc}"
            ) from exc
        pieces, data = self._locate(rendered, spans, prepared, think_blocks)
        trains = [self._trains(message) for message in messages]
        anchors = _Anchors(pieces, data)
        eots = self._ends_of_turn(rendered, anchors, data)
        regions = self._trained_regions(rendered, anchors, eots, trains)
        items, texts = self._chunks(rendered, pieces, data, eots, regions, trains)
        return self._assemble(items, texts, record)

    def _ends_of_turn(
        self, rendered: str, anchors: _Anchors, data: list[tuple[int, int, int]]
    ) -> dict[int, tuple[int, int, int]]:
        """``{message: (start, end, id)}``: the first eot token after each message's last anchor,
        before the next anchor of another message (eot strings inside data do not count)."""
        eots: dict[int, tuple[int, int, int]] = {}
        eot_re = self._eot_re
        if eot_re is None:
            return eots
        solid = anchors.solid
        count = len(solid)
        for m, k in anchors.last.items():
            lower = solid[k][1]
            j = k + 1
            while j < count and solid[j][2] < 0:
                j += 1
            upper = solid[j][0] if j < count else len(rendered)
            match = eot_re.search(rendered, lower, upper)
            while match is not None and data:
                inside = next((e for s, e, _ in data if s <= match.start() < e), None)
                if inside is None:
                    break
                match = eot_re.search(rendered, inside, upper)
            if match is not None:
                eots[m] = (match.start(), match.end(), self.eot_ids[match.group()])
        return eots

    def _trained_regions(
        self, rendered: str, anchors: _Anchors, eots: dict[int, tuple[int, int, int]], trains: list[bool]
    ) -> list[tuple[int, int]]:
        """Character ranges trained for trained messages (merged, in order): from the end of the
        generation prompt (or the first anchor; the content with ``train_on_reasoning: false``) to
        the end of the eot (or of the last anchor)."""
        solid = anchors.solid
        header = self.generation_prompt
        with_reasoning = self.options.train_on_reasoning
        regions = []
        for m, k in anchors.first.items():
            if not trains[m]:
                continue
            if with_reasoning:
                start = solid[k][0]
                if header:
                    found = rendered.rfind(header, solid[k - 1][1] if k else 0, start)
                    if found >= 0:
                        start = found + len(header)
            elif m in anchors.first_main:
                start = solid[anchors.first_main[m]][0]
            else:
                start = solid[anchors.last[m]][1]
            end = eots[m][1] if m in eots else solid[anchors.last[m]][1]
            if end > start:
                regions.append((start, end))
        return _merge(regions)

    def _chunks(
        self,
        rendered: str,
        pieces: list[tuple[int, int, int, str]],
        data: list[tuple[int, int, int]],
        eots: dict[int, tuple[int, int, int]],
        regions: list[tuple[int, int]],
        trains: list[bool],
    ) -> tuple[list[tuple], list[str]]:
        """The rendered text cut into chunks with their training, and the texts to tokenize as text.

        Chunks are ``("t", text, trained, -1)`` template text, ``("c", index into texts, trained,
        message, kind)`` plain text, ``("e", id, trained, message)`` an eot.
        """
        mode = self.options.train_on_eos
        last_trained = max((i for i, t in enumerate(trains) if t), default=None)
        eot_at = {}
        for m, (start, end, token_id) in eots.items():
            trained = (
                mode == "all" or (mode == "turn" and trains[m]) or (mode == "last" and m == last_trained)
            )
            eot_at[start] = (end, token_id, trained, m)
        cuts = sorted(
            {p for region in regions for p in region} | {p for s, e, _ in eots.values() for p in (s, e)}
        )

        items: list[tuple] = []
        texts: list[str] = []
        append = items.append
        with_reasoning = self.options.train_on_reasoning
        cut_index, cut_count = 0, len(cuts)
        region_index, region_count = 0, len(regions)
        position = 0
        end_of_text = len(rendered)
        for s, e, m, field in [*pieces, (end_of_text, end_of_text, -1, "")]:
            if s > position:
                # Template text between two pieces, cut at eots and region boundaries.
                x = position
                while cut_index < cut_count and cuts[cut_index] <= x:
                    cut_index += 1
                while x < s:
                    if cut_index < cut_count and cuts[cut_index] < s:
                        y = cuts[cut_index]
                        cut_index += 1
                    else:
                        y = s
                    eot = eot_at.get(x)
                    if eot is not None and eot[0] == y:
                        append(("e", eot[1], eot[2], eot[3]))
                    else:
                        while region_index < region_count and regions[region_index][1] <= x:
                            region_index += 1
                        trained = region_index < region_count and regions[region_index][0] <= x
                        if data:
                            self._template_with_data(items, texts, rendered, x, y, data, trained)
                        else:
                            append(("t", rendered[x:y], trained, -1))
                    x = y
            if e > s:
                append(("c", len(texts), trains[m] and (field == "content" or with_reasoning), m, field))
                texts.append(rendered[s:e])
            if e > position:
                position = e
        return items, texts

    def _template_with_data(
        self,
        items: list[tuple],
        texts: list[str],
        rendered: str,
        x: int,
        y: int,
        data: list[tuple[int, int, int]],
        trained: bool,
    ) -> None:
        """Chunks for template text ``x:y`` that may hold data: a data part holding a control-token
        string becomes a plain-text chunk of its own; the rest stays template text."""
        cursor = x
        control_re = self._control_re
        for ds, de, dm in data:
            if de <= x or ds >= y:
                continue
            ds, de = max(ds, x), min(de, y)
            if control_re is not None and control_re.search(rendered, ds, de):
                if ds > cursor:
                    items.append(("t", rendered[cursor:ds], trained, -1))
                items.append(("c", len(texts), trained, dm, "data"))
                texts.append(rendered[ds:de])
                cursor = de
        if y > cursor:
            items.append(("t", rendered[cursor:y], trained, -1))

    def _assemble(
        self, items: list[tuple], texts: list[str], record: list[Chunk] | None
    ) -> tuple[list[int], list[int]]:
        """Tokenize the chunks in runs and join them into ``(input_ids, labels)``.

        Chunks with the same training and no end of turn between them are tokenized as one text,
        so that template text and message text merge exactly as in the tokenizer's own encoding
        of the rendered text; training starts and stops at run boundaries, so the prompt before a
        trained reply gets the ids the tokenizer gives the prompt and the reply those of its own
        text (what a model generating after the prompt produces). ``ftk.prompt_strategies.chat_runs``
        has the rules, and what happens to a message text holding a control-token string.
        """
        plan = plan_runs(items, texts, self._control_re)
        self._scaffold_ids(plan.scaffold)
        cache = self._scaffold_cache
        encoded = {
            "w": self._batch_ids(plan.whole, as_text=False) if plan.whole else [],
            "p": self._batch_ids(plan.plain, as_text=True) if plan.plain else [],
        }
        train_all = self.train_on_inputs
        input_ids: list[int] = []
        labels: list[int] = []
        for trained, _, units in plan.runs:
            trained = trained or train_all
            for kind, value, _ in units:
                ids = cache[value] if kind == "s" else [value] if kind == "i" else encoded[kind][value]
                input_ids.extend(ids)
                labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
        if record is not None:
            self._record(items, texts, plan, encoded, record)
        return input_ids, labels

    def _record(
        self,
        items: list[tuple],
        texts: list[str],
        plan: RunPlan,
        encoded: dict[str, list[list[int]]],
        record: list[Chunk],
    ) -> None:
        """Append to ``record`` one ``Chunk`` per chunk, each with the tokens that start in its text."""
        owned: list[list[int]] = [[] for _ in items]
        offsets = {
            "w": self._batch_offsets(plan.whole, as_text=False) if plan.whole else [],
            "p": self._batch_offsets(plan.plain, as_text=True) if plan.plain else [],
        }
        for _, members, units in plan.runs:
            for unit in units:
                kind, value, _ = unit
                starts = unit_starts(unit, members, items, texts)
                if kind == "i":
                    owned[starts[0][1]].append(value)
                    continue
                if kind == "s":
                    ids, spans = self._scaffold_cache[value], self._batch_offsets([value], as_text=False)[0]
                else:
                    ids, spans = encoded[kind][value], offsets[kind][value]
                for token, index in zip(ids, attribute(spans, starts), strict=True):
                    owned[index].append(token)
        for item, ids in zip(items, owned, strict=True):
            tag = item[0]
            kind = {"t": "template", "e": "eot"}.get(tag) or item[4]
            text = self._token_text(item[1]) if tag == "e" else chunk_text(item, texts)
            record.append(Chunk(kind, item[3], text, ids, item[2] or self.train_on_inputs))


class _Anchors:
    """Everything tracked that a message owns (its text pieces and its data), in text order.

    ``solid`` holds ``(start, end, message, is_reasoning)`` for every piece and data span (data of
    no message too, as -1); ``first``, ``last`` and ``first_main`` give, per message, the index in
    ``solid`` of its first anchor, its last one and its first one that is not reasoning.
    """

    __slots__ = ("first", "first_main", "last", "solid")

    def __init__(self, pieces: list[tuple[int, int, int, str]], data: list[tuple[int, int, int]]):
        solid = [(s, e, m, f == REASONING) for s, e, m, f in pieces]
        if data:
            solid = sorted(solid + [(s, e, m, False) for s, e, m in data])
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        first_main: dict[int, int] = {}
        for k, (_, _, m, reasoning) in enumerate(solid):
            if m < 0:
                continue
            if m not in first:
                first[m] = k
            if not reasoning and m not in first_main:
                first_main[m] = k
            last[m] = k
        self.solid, self.first, self.last, self.first_main = solid, first, last, first_main


def _alternation(texts: set[str]) -> re.Pattern | None:
    """A regex matching any of ``texts``, longest first (None for no texts)."""
    if not texts:
        return None
    return re.compile("|".join(re.escape(text) for text in sorted(texts, key=len, reverse=True)))


def build(
    dataset: DatasetConfig, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig
) -> Callable[[dict[str, Any]], dict[str, list[int]]]:
    """The row -> features function for a ``chat_template`` dataset."""
    options = dataset.options
    if not isinstance(options, ChatTemplateOptions):
        options = ChatTemplateOptions()
    return ChatTemplateTokenizer(with_top_level_defaults(options, cfg), tokenizer, cfg)
