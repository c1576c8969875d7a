"""``type: alpaca``: instruction / input / output rows, in the Alpaca layout or through a chat template.

``prompt_style: alpaca`` renders the published Alpaca prompt::

    <preamble>

    ### Instruction:
    <instruction>

    ### Input:            (only when the row has a non-empty input)
    <input>

    ### Response:
    <output><eos>

The preamble is the one the format uses for rows with or without an input; a system prompt
(the row's ``field_system`` column, else the dataset's ``system_prompt``) replaces it.  Prompt and
response are tokenized separately, as plain text, so the boundary between them is exact and a
control-token string inside a row stays text.  The response and the eos are trained; the prompt
too with ``train_on_inputs``.

``prompt_style: chat_template`` turns the row into a conversation (system when there is one,
user = instruction plus the input after a blank line, assistant = output) and hands it to the
``chat_template`` strategy's tokenizer with its default settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from ftk.core.config.schema import DatasetConfig, FtkConfig, StrictModel, TemplateTextOrPath
from ftk.core.lm import IGNORE_INDEX
from ftk.prompt_strategies.chat_defaults import with_top_level_defaults
from ftk.prompt_strategies.chat_template import ChatTemplateOptions, ChatTemplateTokenizer
from ftk.prompt_strategies.completion import leading_special_ids, required_eos_id, text_field
from ftk.prompt_strategies.fields import required_text
from ftk.prompt_strategies.templates import known_template_name

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
PREAMBLE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request."
)


class AlpacaColumns(StrictModel):
    """The columns of Alpaca rows and their system prompt (``alpaca`` and its ``alpaca:<style>`` forms)."""

    field_instruction: str = Field("instruction", description="Column holding the instruction.")
    field_input: str = Field("input", description="Column holding the optional input (context).")
    field_output: str = Field("output", description="Column holding the response to train on.")
    field_system: str = Field(
        "system", description="Column holding an optional per-row system prompt (wins over system_prompt)."
    )
    system_prompt: str | None = Field(
        None, description="System prompt for every row; in the alpaca style it replaces the preamble."
    )


class AlpacaOptions(AlpacaColumns):
    """Dataset keys understood by ``type: alpaca``."""

    prompt_style: Literal["alpaca", "chat_template"] = Field(
        "alpaca", description="Render the Alpaca layout, or a conversation through a chat template."
    )
    chat_template: str | None = Field(
        None, description="With prompt_style chat_template: overrides the top-level chat_template."
    )
    chat_template_jinja: TemplateTextOrPath | None = Field(
        None, description="With prompt_style chat_template: overrides the top-level template text."
    )

    _known_template = field_validator("chat_template")(known_template_name)

    @field_validator("chat_template", "chat_template_jinja")
    @classmethod
    def _needs_chat_style(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("prompt_style") != "chat_template":
            raise PydanticCustomError("alpaca_style", "is only used with prompt_style: chat_template")
        return value


def read_row(row: dict[str, Any], options: AlpacaColumns) -> tuple[str | None, str, str, str]:
    """``(system, instruction, input, output)`` of a row; input is "" when absent, system None when unset."""
    instruction = required_text(row, options.field_instruction, "field_instruction")
    output = required_text(row, options.field_output, "field_output")
    given_input = text_field(row, options.field_input) or ""
    if not given_input.strip():
        given_input = ""
    system = text_field(row, options.field_system) or options.system_prompt or None
    return system, instruction, given_input, output


def render_alpaca_prompt(system: str | None, instruction: str, given_input: str) -> str:
    """The Alpaca prompt up to and including ``### Response:\\n``."""
    preamble = system if system is not None else (PREAMBLE_WITH_INPUT if given_input else PREAMBLE_NO_INPUT)
    prompt = f"{preamble}\n\n### Instruction:\n{instruction}\n\n"
    if given_input:
        prompt += f"### Input:\n{given_input}\n\n"
    return prompt + "### Response:\n"


class AlpacaTokenizer:
    """Turns Alpaca rows into ``input_ids``, ``labels`` and ``attention_mask`` in the Alpaca layout."""

    def __init__(self, options: AlpacaOptions, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig):
        self.options = options
        self.tokenizer = tokenizer
        self.train_on_inputs = cfg.train_on_inputs
        self.prefix = leading_special_ids(tokenizer)
        self.eos = required_eos_id(tokenizer, "alpaca")

    def __call__(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """Features for one dataset row."""
        system, instruction, given_input, output = read_row(row, self.options)
        prompt = render_alpaca_prompt(system, instruction, given_input)
        prompt_ids, response_ids = self.tokenizer(
            [prompt, output], add_special_tokens=False, split_special_tokens=True
        )["input_ids"]
        prompt_ids = [*self.prefix, *prompt_ids]
        response_ids = [*response_ids, self.eos]
        prompt_labels = list(prompt_ids) if self.train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
        input_ids = prompt_ids + response_ids
        return {
            "input_ids": input_ids,
            "labels": prompt_labels + response_ids,
            "attention_mask": [1] * len(input_ids),
        }


class AlpacaChatTokenizer:
    """Turns Alpaca rows into a conversation encoded by ``ChatTemplateTokenizer``."""

    def __init__(self, options: AlpacaOptions, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig):
        self.options = options
        chat_options = ChatTemplateOptions(
            chat_template=options.chat_template, chat_template_jinja=options.chat_template_jinja
        )
        # The top-level eot_tokens and chat_template_kwargs apply (default_system_message does not:
        # the row's system column or system_prompt is the system turn).
        chat_options = with_top_level_defaults(chat_options, cfg).model_copy(
            update={"default_system_message": None}
        )
        self.chat = ChatTemplateTokenizer(chat_options, tokenizer, cfg)

    def __call__(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """Features for one dataset row."""
        system, instruction, given_input, output = read_row(row, self.options)
        user = f"{instruction}\n\n{given_input}" if given_input else instruction
        messages = [{"role": "system", "content": system, "train": None}] if system is not None else []
        messages += [
            {"role": "user", "content": user, "train": None},
            {"role": "assistant", "content": output, "train": None},
        ]
        return self.chat.encode_messages(messages)


def build(
    dataset: DatasetConfig, tokenizer: PreTrainedTokenizerBase, cfg: FtkConfig
) -> Callable[[dict[str, Any]], dict[str, list[int]]]:
    """The row -> features function for an ``alpaca`` dataset."""
    options = dataset.options
    if not isinstance(options, AlpacaOptions):
        options = AlpacaOptions()
    if options.prompt_style == "chat_template":
        return AlpacaChatTokenizer(options, tokenizer, cfg)
    return AlpacaTokenizer(options, tokenizer, cfg)
