"""axolotl's instruction formats: ``alpaca:chat``, ``alpaca:phi``, ``jeopardy`` and their relatives.

axolotl names these ``<format>`` or ``<format>:<style>``.  A format says which columns hold the
instruction, the optional input and the response, and which preamble (system text) goes first; a
style says how the turn is laid out:

========  =====================================================================================
style     prompt (``{system}`` part, then the turn; with an input / without one)
========  =====================================================================================
instruct  ``{system}\\n\\n`` ``### Instruction:\\n{instruction}\\n\\n[### Input:\\n{input}\\n\\n]### Response:\\n``
chat      ``SYSTEM: {system}\\n`` ``USER: {instruction}\\n[{input}\\n]ASSISTANT:``
chatml    ``<|im_start|>system\\n{system}<|im_end|>\\n`` ``<|im_start|>user\\n{instruction}[\\n{input}]<|im_end|>\\n<|im_start|>assistant\\n``
phi       ``<|system|>\\n{system}<|end|>\\n`` ``<|user|>\\n{instruction}<|end|>{input}<|assistant|>``, without
          an input ``<|user|>\\n{instruction}<|end|>\\n<|assistant|>\\n``
========  =====================================================================================

The response follows the prompt directly and ends with the eos token.  Prompt and response are
tokenized apart, so the boundary is exact: the response and its eos are trained, the prompt only
with ``train_on_inputs``.  Row text is tokenized as plain text (``<|im_end|>`` typed in a row stays
text); the layout's own control strings (``<|im_start|>``, ``<|user|>``, ...) are tokenized as the
tokenizer knows them.

The formats (columns; preamble):

* ``alpaca:<style>``: ``instruction``, ``input``, ``output`` (mappable as for ``type: alpaca``); the
  Alpaca preamble, replaced by the row's ``system`` column or ``system_prompt``.  axolotl's module
  names ``alpaca_chat`` and ``alpaca_instruct`` are ``alpaca:chat`` and ``alpaca:instruct``.
* ``jeopardy[:<style>]``: ``question``, ``category`` as the input, response ``what is <answer>``;
  the Alpaca preamble.
* ``oasst[:<style>]``: ``INSTRUCTION``, ``RESPONSE``; the Alpaca preamble.
* ``gpteacher[:<style>]``: ``instruction``, ``input``, ``response``; the Alpaca preamble.
* ``explainchoice[:<style>]``: ``question``, ``choices`` (a list, one ``- "choice"`` line each) as
  the input, ``solution`` (else ``explanation``); a preamble asking to explain the choice.
* ``concisechoice``: as explainchoice, in the chat layout, with a preamble asking to be concise.
* ``summarizetldr``: ``article``, ``summary``; no preamble; ``USER: Summarize the following article
  as a TL;DR.\\n{article}\\nASSISTANT:``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.errors import RowError
from ftk.core.lm import IGNORE_INDEX
from ftk.prompt_strategies.alpaca import PREAMBLE_NO_INPUT, PREAMBLE_WITH_INPUT, AlpacaColumns, read_row
from ftk.prompt_strategies.completion import leading_special_ids, required_eos_id
from ftk.prompt_strategies.fields import missing_field, required_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Layout:
    """How a prompt is laid out: the turn with and without an input, and the system part."""

    with_input: str
    without_input: str
    system: str  # "{system}" formatted; "" leaves the system part out


STYLES: dict[str, Layout] = {
    "instruct": Layout(
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Response:\n",
        "{system}\n\n",
    ),
    "chat": Layout(
        "USER: {instruction}\n{input}\nASSISTANT:", "USER: {instruction}\nASSISTANT:", "SYSTEM: {system}\n"
    ),
    "chatml": Layout(
        "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\n{system}<|im_end|>\n",
    ),
    "phi": Layout(
        "<|user|>\n{instruction}<|end|>{input}<|assistant|>",
        "<|user|>\n{instruction}<|end|>\n<|assistant|>\n",
        "<|system|>\n{system}<|end|>\n",
    ),
}
#: The layouts' own control strings (only the constants above are searched for them, never row text).
_MARKER = re.compile(r"<\|[a-z_]+\|>")

EXPLAIN_PREAMBLE = "Choose the answer that best answers the question. Explain your reasoning.\n"
CONCISE_PREAMBLE = "Choose the answer that best answers the question. Be concise in your response.\n\n"
TLDR = "USER: Summarize the following article as a TL;DR.\n"

#: A row's ``(system or None, instruction, input, response)``.
Fields = tuple[str | None, str, str, str]


def _choice_fields(row: dict[str, Any]) -> Fields:
    choices = row.get("choices")
    if choices is None:
        raise missing_field(row, "choices")
    if not isinstance(choices, list) or not all(isinstance(choice, str) for choice in choices):
        raise RowError(f"choices: must be a list of texts, got {type(choices).__name__}")
    answer = row.get("solution")
    if answer is None:
        answer = required_text(row, "explanation")
    elif not isinstance(answer, str):
        raise RowError(f"solution: must be text, got {type(answer).__name__}")
    listed = "\n".join(f'- "{choice}"' for choice in choices)
    return None, required_text(row, "question"), listed, answer


def _optional(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if value is not None and not isinstance(value, str):
        raise RowError(f"{field}: must be text, got {type(value).__name__}")
    return value or ""


@dataclass(frozen=True)
class Format:
    """Where a format's fields come from and what goes before them."""

    read: Callable[[dict[str, Any], AlpacaColumns], Fields]
    preambles: tuple[str, str]  # (with an input, without one); "" for none
    layout: Layout | None = None  # a fixed layout (the format takes no style)


def _alpaca(row: dict[str, Any], options: AlpacaColumns) -> Fields:
    return read_row(row, options)


FORMATS: dict[str, Format] = {
    "alpaca": Format(_alpaca, (PREAMBLE_WITH_INPUT, PREAMBLE_NO_INPUT)),
    "jeopardy": Format(
        lambda row, _: (
            None,
            required_text(row, "question"),
            _optional(row, "category"),
            "what is " + required_text(row, "answer"),
        ),
        (PREAMBLE_WITH_INPUT, PREAMBLE_NO_INPUT),
    ),
    "oasst": Format(
        lambda row, _: (None, required_text(row, "INSTRUCTION"), "", required_text(row, "RESPONSE")),
        (PREAMBLE_WITH_INPUT, PREAMBLE_NO_INPUT),
    ),
    "gpteacher": Format(
        lambda row, _: (
            None,
            required_text(row, "instruction"),
            _optional(row, "input"),
            required_text(row, "response"),
        ),
        (PREAMBLE_WITH_INPUT, PREAMBLE_NO_INPUT),
    ),
    "explainchoice": Format(lambda row, _: _choice_fields(row), (EXPLAIN_PREAMBLE, EXPLAIN_PREAMBLE)),
    "concisechoice": Format(
        lambda row, _: _choice_fields(row),
        (CONCISE_PREAMBLE, CONCISE_PREAMBLE),
        Layout(STYLES["chat"].with_input, STYLES["chat"].without_input, "{system}"),
    ),
    "summarizetldr": Format(
        lambda row, _: (None, required_text(row, "article"), "", required_text(row, "summary")),
        ("", ""),
        Layout(TLDR + "{instruction}\n{input}\nASSISTANT:", TLDR + "{instruction}\nASSISTANT:", ""),
    ),
}


#: axolotl's module names for two of the alpaca styles (``type: alpaca_chat`` is ``alpaca:chat``).
ALIASES = {"alpaca_chat": "alpaca:chat", "alpaca_instruct": "alpaca:instruct"}


def strategy_names() -> list[str]:
    """Every ``type`` this module serves: ``alpaca:<style>``, each format plain and with a style."""
    names = [f"alpaca:{style}" for style in STYLES] + list(ALIASES)
    for name, spec in FORMATS.items():
        if name == "alpaca":
            continue
        names.append(name)
        if spec.layout is None:
            names += [f"{name}:{style}" for style in STYLES]
    return names


def prompt_segments(
    layout: Layout, system: str, instruction: str, given_input: str
) -> list[tuple[str, bool]]:
    """The prompt as ``(text, is_control_string)`` pieces; row values are never control strings."""
    pieces: list[tuple[str, bool]] = []
    values = {"system": system, "instruction": instruction, "input": given_input}
    formats = [layout.system] if system and layout.system else []
    formats.append(layout.with_input if given_input else layout.without_input)
    for fmt in formats:
        for literal, field, _, _ in string.Formatter().parse(fmt):
            position = 0
            for found in _MARKER.finditer(literal):
                pieces.append((literal[position : found.start()], False))
                pieces.append((found.group(), True))
                position = found.end()
            pieces.append((literal[position:], False))
            if field is not None:
                pieces.append((values[field], False))
    merged: list[tuple[str, bool]] = []
    for text, marker in pieces:
        if merged and not marker and not merged[-1][1]:
            merged[-1] = (merged[-1][0] + text, False)
        elif text:
            merged.append((text, marker))
    return [(text, marker) for text, marker in merged if text]


class StyledTokenizer:
    """Turns rows of one format into ``input_ids``, ``labels`` and ``attention_mask`` in one layout."""

    def __init__(
        self,
        name: str,
        spec: Format,
        layout: Layout,
        options: AlpacaColumns,
        tokenizer: PreTrainedTokenizerBase,
        cfg: FtkConfig,
    ):
        self.spec = spec
        self.layout = layout
        self.options = options
        self.tokenizer = tokenizer
        self.train_on_inputs = cfg.train_on_inputs
        self.prefix = leading_special_ids(tokenizer)
        self.eos = required_eos_id(tokenizer, name)

    def prompt(self, row: dict[str, Any]) -> tuple[list[tuple[str, bool]], str]:
        """The prompt's pieces (see ``prompt_segments``) and the response text of ``row``."""
        system, instruction, given_input, output = self.spec.read(row, self.options)
        if system is None:
            system = self.spec.preambles[0 if given_input else 1]
        return prompt_segments(self.layout, system, instruction, given_input), output

    def __call__(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """Features for one dataset row."""
        pieces, output = self.prompt(row)
        texts = [text for text, marker in pieces if not marker] + [output]
        markers = [text for text, marker in pieces if marker]
        text_ids = iter(
            self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        )
        marker_ids = iter(self.tokenizer(markers, add_special_tokens=False)["input_ids"] if markers else [])
        prompt_ids = list(self.prefix)
        for _, marker in pieces:
            prompt_ids += next(marker_ids) if marker else next(text_ids)
        response_ids = [*next(text_ids), self.eos]
        prompt_labels = list(prompt_ids) if self.train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
        input_ids = prompt_ids + response_ids
        return {
            "input_ids": input_ids,
            "labels": prompt_labels + response_ids,
            "attention_mask": [1] * len(input_ids),
        }


def builder(type_name: str) -> Callable[[DatasetConfig, PreTrainedTokenizerBase, FtkConfig], StyledTokenizer]:
    """The ``build`` function of the strategy ``type_name`` (one of ``strategy_names()``)."""
    name, _, style = ALIASES.get(type_name, type_name).partition(":")
    spec = FORMATS[name]
    layout = spec.layout or STYLES[style or "instruct"]

    def build(dataset: DatasetConfig, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig) -> StyledTokenizer:
        options = (
            dataset.options
            if isinstance(dataset.options, AlpacaColumns)
            else AlpacaColumns.model_validate({})
        )
        return StyledTokenizer(type_name, spec, layout, options, tokenizer, cfg)

    build.__name__ = "build"
    build.__doc__ = f"The row -> features function for a ``{type_name}`` dataset."
    return build
