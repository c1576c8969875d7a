"""alpaca: exact ids and labels for both prompt styles, system prompts, column mapping, bad rows."""

from __future__ import annotations

import json
import textwrap

import pytest
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from ftk.core.config.loader import load_config
from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.data.pipeline import prepare_data
from ftk.core.errors import FtkError, RowError
from ftk.prompt_strategies.alpaca import AlpacaOptions, build

X = -100
EOS, PAD, START, NL = 151645, 151643, 151644, 198
# "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
PREAMBLE = [
    38214,
    374,
    458,
    7600,
    429,
    16555,
    264,
    3383,
    13,
    9645,
    264,
    2033,
    429,
    34901,
    44595,
    279,
    1681,
    382,
]
# "Below is an instruction that describes a task, paired with an input that provides further context.
#  Write a response that appropriately completes the request.\n\n"
PREAMBLE_INPUT = [38214, 374, 458, 7600, 429, 16555, 264, 3383, 11, 34426, 448, 458, 1946, 429, 5707]
PREAMBLE_INPUT += [4623, 2266, 13, 9645, 264, 2033, 429, 34901, 44595, 279, 1681, 382]
INSTRUCTION = [14374, 29051, 510]  # "### Instruction:\n"
INPUT = [14374, 5571, 510]  # "### Input:\n"
RESPONSE = [14374, 5949, 510]  # "### Response:\n"
SAY_HI = [45764, 15588]  # "Say hi"
ADD = [2212]  # "Add"
TWO_AND_THREE = [17, 323, 220, 18]  # "2 and 3"
BLANK = [271]  # "\n\n"
HELLO = [9707, 1052]  # "Hello there"
FIVE = [20]  # "5"
BE_BRIEF = [3430, 9814, 382]  # "Be brief.\n\n"
SYSTEM, USER, ASSISTANT = [8948, NL], [872, NL], [77091, NL]  # ChatML role headers

NO_INPUT_PROMPT = [*PREAMBLE, *INSTRUCTION, *SAY_HI, *BLANK, *RESPONSE]
INPUT_PROMPT = [*PREAMBLE_INPUT, *INSTRUCTION, *ADD, *BLANK, *INPUT, *TWO_AND_THREE, *BLANK, *RESPONSE]


def encode(tokenizer, row, train_on_inputs=False, **options):
    dataset = DatasetConfig(path="d", type="alpaca")
    dataset._options = AlpacaOptions(**options)
    cfg = FtkConfig(base_model="m", datasets=[dataset], train_on_inputs=train_on_inputs)
    return build(dataset, tokenizer, cfg)(row)


def masked(ids):
    return [X] * len(ids)


def test_without_input_trains_response_and_eos(tokenizer):
    out = encode(tokenizer, {"instruction": "Say hi", "output": "Hello there"})
    assert out["input_ids"] == [*NO_INPUT_PROMPT, *HELLO, EOS]
    assert out["labels"] == [*masked(NO_INPUT_PROMPT), *HELLO, EOS]
    assert out["attention_mask"] == [1] * len(out["input_ids"])
    assert tokenizer.decode(out["input_ids"]) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nSay hi\n\n### Response:\nHello there<|im_end|>"
    )


@pytest.mark.parametrize("blank", [{}, {"input": ""}, {"input": None}, {"input": "  \n"}])
def test_absent_or_empty_input_means_no_input(tokenizer, blank):
    out = encode(tokenizer, {"instruction": "Say hi", "output": "Hello there", **blank})
    assert out["input_ids"] == [*NO_INPUT_PROMPT, *HELLO, EOS]


def test_with_input_uses_the_input_preamble_and_section(tokenizer):
    out = encode(tokenizer, {"instruction": "Add", "input": "2 and 3", "output": "5"})
    assert out["input_ids"] == [*INPUT_PROMPT, *FIVE, EOS]
    assert out["labels"] == [*masked(INPUT_PROMPT), *FIVE, EOS]
    assert tokenizer.decode(out["input_ids"]).endswith(
        "request.\n\n### Instruction:\nAdd\n\n### Input:\n2 and 3\n\n### Response:\n5<|im_end|>"
    )


def test_train_on_inputs_trains_every_token(tokenizer):
    out = encode(tokenizer, {"instruction": "Add", "input": "2 and 3", "output": "5"}, train_on_inputs=True)
    assert out["input_ids"] == [*INPUT_PROMPT, *FIVE, EOS]
    assert out["labels"] == out["input_ids"]


def test_system_prompt_replaces_the_preamble(tokenizer):
    prompt = [*BE_BRIEF, *INSTRUCTION, *SAY_HI, *BLANK, *RESPONSE]
    out = encode(tokenizer, {"instruction": "Say hi", "output": "Hello there"}, system_prompt="Be brief.")
    assert out["input_ids"] == [*prompt, *HELLO, EOS]
    assert out["labels"] == [*masked(prompt), *HELLO, EOS]
    # A row's own system column wins over the dataset-wide prompt.
    row = {"instruction": "Say hi", "output": "Hello there", "system": "Be brief."}
    assert encode(tokenizer, row, system_prompt="Be long.")["input_ids"] == [*prompt, *HELLO, EOS]


def test_column_mapping(tokenizer):
    row = {"question": "Add", "context": "2 and 3", "answer": "5", "persona": "Be brief.", "input": "ignored"}
    out = encode(
        tokenizer,
        row,
        field_instruction="question",
        field_input="context",
        field_output="answer",
        field_system="persona",
    )
    prompt = [*BE_BRIEF, *INSTRUCTION, *ADD, *BLANK, *INPUT, *TWO_AND_THREE, *BLANK, *RESPONSE]
    assert out["input_ids"] == [*prompt, *FIVE, EOS]
    assert out["labels"] == [*masked(prompt), *FIVE, EOS]


def test_control_token_strings_in_a_row_stay_text(tokenizer):
    out = encode(tokenizer, {"instruction": "Say hi", "output": "<|im_end|>"})
    forged = [27, 91, 318, 6213, 91, 29]  # '<|im_end|>' as plain text
    assert out["input_ids"] == [*NO_INPUT_PROMPT, *forged, EOS]
    assert out["input_ids"].count(EOS) == 1


def test_a_tokenizer_that_adds_bos_gets_it_first_and_masked(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Make the tokenizer prepend <|endoftext|> the way Llama-style tokenizers prepend their bos.
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", PAD)]
    )
    out = encode(tokenizer, {"instruction": "Say hi", "output": "Hello there"})
    assert out["input_ids"] == [PAD, *NO_INPUT_PROMPT, *HELLO, EOS]
    assert out["labels"] == [X, *masked(NO_INPUT_PROMPT), *HELLO, EOS]


def test_chat_template_style(tokenizer):
    row = {"instruction": "Add", "input": "2 and 3", "output": "5"}
    out = encode(tokenizer, row, prompt_style="chat_template")
    user = [START, *USER, *ADD, *BLANK, *TWO_AND_THREE, EOS, NL]
    assert out["input_ids"] == [*user, START, *ASSISTANT, *FIVE, EOS, NL]
    assert out["labels"] == [*masked(user), X, X, X, *FIVE, EOS, X]

    with_system = encode(tokenizer, row, prompt_style="chat_template", system_prompt="Be brief.")
    system = [START, *SYSTEM, 3430, 9814, 13, EOS, NL]  # "Be brief." without the blank line
    assert with_system["input_ids"] == [*system, *user, START, *ASSISTANT, *FIVE, EOS, NL]
    assert with_system["labels"] == [*masked(system), *masked(user), X, X, X, *FIVE, EOS, X]

    everything = encode(tokenizer, row, prompt_style="chat_template", train_on_inputs=True)
    assert everything["labels"] == everything["input_ids"]


def test_chat_template_style_without_input_and_with_a_builtin_template(tokenizer):
    row = {"instruction": "Say hi", "output": "Hello there"}
    out = encode(tokenizer, row, prompt_style="chat_template", chat_template="chatml")
    assert out["input_ids"] == [START, *USER, *SAY_HI, EOS, NL, START, *ASSISTANT, *HELLO, EOS, NL]
    assert [label for label in out["labels"] if label != X] == [*HELLO, EOS]


def test_template_keys_need_the_chat_template_style():
    with pytest.raises(ValueError, match="is only used with prompt_style: chat_template"):
        AlpacaOptions(chat_template="chatml")


@pytest.mark.parametrize(
    ("row", "options", "message"),
    [
        (
            {"output": "x"},
            {},
            "instruction: missing: no such column (columns: output); set field_instruction",
        ),
        ({"instruction": None, "output": "x"}, {}, "instruction: missing or null"),
        (
            {"instruction": "x"},
            {},
            "output: missing: no such column (columns: instruction); set field_output",
        ),
        ({"instruction": 3, "output": "x"}, {}, "instruction: must be text, got int"),
        ({"instruction": "x", "output": ["y"]}, {}, "output: must be text, got list"),
        ({"instruction": "x", "input": 2, "output": "y"}, {}, "input: must be text, got int"),
        ({"instruction": "x", "output": "y", "system": {"a": 1}}, {}, "system: must be text, got dict"),
        (
            {"instruction": "x", "output": "y"},
            {"field_output": "answer"},
            "answer: missing: no such column (columns: instruction, output); set field_output",
        ),
        (
            {"instruction": "x"},
            {"prompt_style": "chat_template"},
            "output: missing: no such column (columns: instruction); set field_output",
        ),
    ],
)
def test_bad_rows_name_the_field(tokenizer, row, options, message):
    with pytest.raises(RowError) as info:
        encode(tokenizer, row, **options)
    assert str(info.value) == message


CONFIG = """\
base_model: {model}
datasets:
  - path: {data}
    type: alpaca
    field_instruction: question
    field_output: answer
    system_prompt: Be brief.
sequence_len: 64
dataset_prepared_path: {prepared}
"""


def test_config_options_and_prepared_data(tmp_path, tiny_model_dir, tokenizer):
    data = tmp_path / "alpaca.jsonl"
    data.write_text(json.dumps({"question": "Say hi", "answer": "Hello there"}) + "\n")
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG.format(model=tiny_model_dir, data=data, prepared=tmp_path / "prepared"))
    cfg, manager = load_config(path)
    options = cfg.datasets[0].options
    assert isinstance(options, AlpacaOptions)
    assert (options.field_instruction, options.field_output, options.field_input) == (
        "question",
        "answer",
        "input",
    )
    assert (options.system_prompt, options.prompt_style) == ("Be brief.", "alpaca")

    prepared = prepare_data(cfg, tokenizer, manager.collect_registrations())
    prompt = [*BE_BRIEF, *INSTRUCTION, *SAY_HI, *BLANK, *RESPONSE]
    assert prepared.train["input_ids"] == [[*prompt, *HELLO, EOS]]
    assert prepared.train["labels"] == [[*masked(prompt), *HELLO, EOS]]
    assert prepared.sources[0].trained_tokens == 3


def test_config_typo_and_misplaced_template_key(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            base_model: m
            datasets:
              - path: a.jsonl
                type: alpaca
                field_intruction: question
              - path: b.jsonl
                type: alpaca
                chat_template: chatml
            """
        )
    )
    with pytest.raises(FtkError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert (
        lines[0] == f"{path}:5: datasets[0].field_intruction: unknown key (did you mean 'field_instruction'?)"
    )
    assert lines[1] == (
        f"{path}:8: datasets[1].chat_template: is only used with prompt_style: chat_template (got 'chatml')"
    )
