"""``type: chat_template``: conversations rendered with a chat template, trained per role.

The conversation is rendered once, with each message's content tracked through the template
(``ftk.integrations.chat_template_spans``), which splits the text into template scaffolding and
message contents.  Scaffolding is tokenized with
its control tokens; contents are tokenized as plain text (a ``<|im_end|>`` typed by a user stays
text), so a message cannot forge a turn.  Labels follow the segments: a message's content is
trained when its role is in ``roles_to_train``; the end-of-turn token that the template emits
right after a content is trained as ``train_on_eos`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field
from transformers import PreTrainedTokenizerBase

from ftk.core.config.schema import DatasetConfig, FtkConfig, StrictModel
from ftk.core.errors import FtkError
from ftk.integrations.chat_template_spans import ContentSpan, render_with_content_spans
from ftk.prompt_strategies.templates import resolve_chat_template

IGNORE_INDEX = -100
CANONICAL_ROLES = ("system", "user", "assistant", "tool")
SCAFFOLD_CACHE_SIZE = 4096


class ChatTemplateOptions(StrictModel):
    """Dataset keys understood by ``type: chat_template``."""

    field_messages: str = Field("messages", description="Column holding the list of messages.")
    message_property_mappings: dict[str, str] = Field(
        default_factory=lambda: {"role": "role", "content": "content"},
        description="Where each message keeps its role and content, e.g. {role: from, content: value}.",
    )
    roles: dict[str, list[str]] | None = Field(
        None, description="Role names in the data for each canonical role, e.g. {user: [human]}."
    )
    roles_to_train: list[str] = Field(
        default_factory=lambda: ["assistant"], description="Roles whose content is trained."
    )
    train_on_eos: Literal["turn", "all", "last", "none"] = Field(
        "turn",
        description="Which end-of-turn tokens are trained: after trained turns, all, the last, none.",
    )
    message_field_training: str | None = Field(
        None, description="Message property that, when present, turns training on or off for it."
    )
    chat_template: str | None = Field(None, description="Overrides the top-level chat_template.")
    chat_template_jinja: str | None = Field(None, description="Overrides the top-level template text.")


class RowError(FtkError):
    """A row that cannot be turned into an example: the message names the field."""


def _role_lookup(options: ChatTemplateOptions) -> dict[str, str]:
    lookup = {role: role for role in CANONICAL_ROLES}
    for canonical, aliases in (options.roles or {}).items():
        for alias in aliases:
            lookup[alias] = canonical
    return lookup


def _normalise_messages(
    row: dict[str, Any], options: ChatTemplateOptions, roles: dict[str, str]
) -> list[dict]:
    """The row's messages as ``{"role", "content", "train"}`` dicts with canonical roles."""
    messages = row.get(options.field_messages)
    if messages is None:
        raise RowError(f"{options.field_messages}: missing")
    if not isinstance(messages, list) or not messages:
        raise RowError(f"{options.field_messages}: must be a non-empty list of messages")
    role_key = options.message_property_mappings.get("role", "role")
    content_key = options.message_property_mappings.get("content", "content")
    result = []
    for index, message in enumerate(messages):
        where = f"{options.field_messages}[{index}]"
        if not isinstance(message, dict):
            raise RowError(f"{where}: must be a mapping with {role_key!r} and {content_key!r}")
        raw_role = message.get(role_key)
        if raw_role not in roles:
            raise RowError(f"{where}.{role_key}: unknown role {raw_role!r}; map it with `roles:`")
        content = message.get(content_key)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise RowError(f"{where}.{content_key}: must be text, got {type(content).__name__}")
        train = message.get(options.message_field_training) if options.message_field_training else None
        result.append({"role": roles[raw_role], "content": content, "train": train})
    return result


def _content_pieces(text: str, spans: list[ContentSpan], messages: list[dict]) -> list[tuple[int, int, int]]:
    """``(start, end, message)`` for every rendered content piece, in text order.

    Tracked spans are exact.  A message whose content the template rendered without keeping
    track of it is searched for between the pieces of the messages before and after it.
    """
    pieces = sorted((span.start, span.end, span.message) for span in spans)
    tracked = {message for _, _, message in pieces}
    for index, message in enumerate(messages):
        if index in tracked or not message["content"]:
            continue
        lower = max((end for _, end, m in pieces if m < index), default=0)
        upper = min((start for start, _, m in pieces if m > index), default=len(text))
        start = text.find(message["content"], lower, upper)
        if start < 0:
            raise RowError(
                f"{index} ({message['role']}): the chat template does not render this message's content "
                "verbatim, so its tokens cannot be located"
            )
        pieces.append((start, start + len(message["content"]), index))
        pieces.sort()
    return pieces


class ChatTemplateTokenizer:
    """Turns rows into ``input_ids``, ``labels`` and ``attention_mask`` for one dataset's settings."""

    def __init__(self, options: ChatTemplateOptions, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig):
        self.options = options
        self.tokenizer = tokenizer
        self.train_on_inputs = cfg.train_on_inputs
        self.template = resolve_chat_template(
            options.chat_template or cfg.chat_template,
            options.chat_template_jinja or cfg.chat_template_jinja,
            tokenizer,
        )
        self.roles = _role_lookup(options)
        self.special_ids = set(tokenizer.all_special_ids) | {
            token_id for token_id, added in tokenizer.added_tokens_decoder.items() if added.special
        }
        # Template text repeats from row to row ("<|im_end|>\n<|im_start|>assistant\n"): tokenize each once.
        self._scaffold_cache: dict[str, list[int]] = {}

    def _scaffold_ids(self, scaffolds: list[str]) -> list[list[int]]:
        """Token ids of template text pieces (control tokens recognised), cached by text."""
        cache = self._scaffold_cache
        missing = list({text for text in scaffolds if text not in cache})
        if missing:
            if len(cache) > SCAFFOLD_CACHE_SIZE:
                cache.clear()
            encoded = self.tokenizer(missing, add_special_tokens=False)["input_ids"]
            cache.update(zip(missing, encoded, strict=True))
        return [list(cache[text]) for text in scaffolds]

    def _trains(self, message: dict) -> bool:
        if message["train"] is not None:
            return bool(message["train"])
        return message["role"] in self.options.roles_to_train

    def __call__(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """Features for one dataset row."""
        return self.encode_messages(_normalise_messages(row, self.options, self.roles))

    def encode_messages(self, messages: list[dict[str, Any]]) -> dict[str, list[int]]:
        """Features for a conversation of ``{"role", "content", "train"}`` messages (canonical roles).

        ``train`` may be None (the role decides, through ``roles_to_train``) or a bool.
        """
        rendered, spans = render_with_content_spans(
            self.template,
            [{"role": m["role"], "content": m["content"]} for m in messages],
            add_generation_prompt=False,
            **self.tokenizer.special_tokens_map,
        )
        pieces = _content_pieces(rendered, spans, messages)
        scaffolds, contents = [], []
        cursor = 0
        for start, end, _ in pieces:
            scaffolds.append(rendered[cursor:start])
            contents.append(rendered[start:end])
            cursor = end
        scaffolds.append(rendered[cursor:])
        scaffold_ids = self._scaffold_ids(scaffolds)
        content_ids = self.tokenizer(contents, add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]

        trains = [self._trains(message) for message in messages]
        last_piece_of = {message: position for position, (_, _, message) in enumerate(pieces)}
        last_trained = max((i for i, t in enumerate(trains) if t), default=None)
        eos_mode = self.options.train_on_eos
        input_ids: list[int] = []
        labels: list[int] = []
        for position, (_, _, message) in enumerate(pieces):
            self._extend(input_ids, labels, scaffold_ids[position], trained=self.train_on_inputs)
            trained = trains[message]
            self._extend(input_ids, labels, content_ids[position], trained=trained or self.train_on_inputs)
            following = scaffold_ids[position + 1]
            if last_piece_of[message] == position and following and following[0] in self.special_ids:
                # The end-of-turn token is the first token the template emits after the content.
                train_eos = (
                    eos_mode == "all"
                    or (eos_mode == "turn" and trained)
                    or (eos_mode == "last" and message == last_trained)
                )
                input_ids.append(following[0])
                labels.append(following[0] if train_eos or self.train_on_inputs else IGNORE_INDEX)
                scaffold_ids[position + 1] = following[1:]
        self._extend(input_ids, labels, scaffold_ids[-1], trained=self.train_on_inputs)
        return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}

    @staticmethod
    def _extend(input_ids: list[int], labels: list[int], ids: list[int], trained: bool) -> None:
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))


def build(
    dataset: DatasetConfig, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig
) -> Callable[[dict[str, Any]], dict[str, list[int]]]:
    """The row -> features function for a ``chat_template`` dataset."""
    options = dataset.options
    if not isinstance(options, ChatTemplateOptions):
        options = ChatTemplateOptions()
    return ChatTemplateTokenizer(options, tokenizer, cfg)
