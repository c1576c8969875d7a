"""Built-in chat templates: exact ids and labels of a system + two-turn chat, end-of-turn tokens, prompts.

Each template runs on the tiny model's tokenizer (Qwen BPE) with that family's control tokens added.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.errors import FtkError, RowError
from ftk.prompt_strategies.chat_template import ChatTemplateOptions, ChatTemplateTokenizer
from ftk.prompt_strategies.templates import BUILTIN_TEMPLATES, resolve_chat_template

X = -100
NL, NL2 = 198, 271  # "\n", "\n\n"
SYSTEM, USER, ASSISTANT, MODEL = 8948, 872, 77091, 2528  # the role words
KIND = [2610, 525, 3093, 13]  # "You are kind."
# "You are kind.\n\n": the system message merges with the template's "\n\n" (".\n\n" is one token),
# as the tokenizer merges them in the whole rendered text.
KIND_NL2 = [2610, 525, 3093, 382]
HI = [13048]  # "Hi"
HELLO = [9707, 1052]  # "Hello there"
BYE = [1359, 68]  # "Bye"
IM_START, IM_END = 151644, 151645

CONVERSATION = [
    {"role": "system", "content": "You are kind."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye"},
]

EXPECTED_IDS = {
    "llama3": {
        "<|begin_of_text|>": 151646,
        "<|end_of_text|>": 151647,
        "<|start_header_id|>": 151648,
        "<|end_header_id|>": 151649,
        "<|eot_id|>": 151650,
    },
    "qwen3": {"<think>": 151646, "</think>": 151647},
    "mistral": {"<s>": 128245, "</s>": 128247, "[INST]": 151646, "[/INST]": 151647},
    "gemma": {"<bos>": 151646, "<eos>": 151647, "<start_of_turn>": 151648, "<end_of_turn>": 151649},
}


def test_added_control_tokens_have_the_ids_the_tests_spell_out(tokenizers):
    for name, expected in EXPECTED_IDS.items():
        for token, token_id in expected.items():
            assert tokenizers[name].convert_tokens_to_ids(token) == token_id, (name, token)


def chat_tokenizer(tokenizer, name, train_on_inputs=False, **options):
    cfg = FtkConfig(base_model="m", datasets=[DatasetConfig(path="d")], train_on_inputs=train_on_inputs)
    return ChatTemplateTokenizer(ChatTemplateOptions(chat_template=name, **options), tokenizer, cfg)


def masked(ids):
    return [X] * len(ids)


BOT, EOT_TEXT, SH, EH, EOT = 151646, 151647, 151648, 151649, 151650
THINK, END_THINK = 151646, 151647
BOS_S, EOS_S, INST, END_INST = 128245, 128247, 151646, 151647
BOS_G, EOS_G, SOT, EOT_G = 151646, 151647, 151648, 151649

# (input_ids, labels) for CONVERSATION, per template, written out turn by turn.
EXPECTED = {
    "chatml": (
        [IM_START, SYSTEM, NL, *KIND, IM_END, NL]
        + [IM_START, USER, NL, *HI, IM_END, NL]
        + [IM_START, ASSISTANT, NL, *HELLO, IM_END, NL]
        + [IM_START, USER, NL, *BYE, IM_END, NL]
        + [IM_START, ASSISTANT, NL, *BYE, IM_END, NL],
        masked([IM_START, SYSTEM, NL, *KIND, IM_END, NL])
        + masked([IM_START, USER, NL, *HI, IM_END, NL])
        + masked([IM_START, ASSISTANT, NL])
        + [*HELLO, IM_END, X]
        + masked([IM_START, USER, NL, *BYE, IM_END, NL])
        + masked([IM_START, ASSISTANT, NL])
        + [*BYE, IM_END, X],
    ),
    "llama3": (
        [BOT, SH, SYSTEM, EH, NL2, *KIND, EOT]
        + [SH, USER, EH, NL2, *HI, EOT]
        + [SH, ASSISTANT, EH, NL2, *HELLO, EOT]
        + [SH, USER, EH, NL2, *BYE, EOT]
        + [SH, ASSISTANT, EH, NL2, *BYE, EOT],
        masked([BOT, SH, SYSTEM, EH, NL2, *KIND, EOT])
        + masked([SH, USER, EH, NL2, *HI, EOT])
        + masked([SH, ASSISTANT, EH, NL2])
        + [*HELLO, EOT]
        + masked([SH, USER, EH, NL2, *BYE, EOT])
        + masked([SH, ASSISTANT, EH, NL2])
        + [*BYE, EOT],
    ),
    # Qwen3 gives the final assistant turn an empty think block; the model writes it after the
    # generation prompt, so it is trained.
    "qwen3": (
        [IM_START, SYSTEM, NL, *KIND, IM_END, NL]
        + [IM_START, USER, NL, *HI, IM_END, NL]
        + [IM_START, ASSISTANT, NL, *HELLO, IM_END, NL]
        + [IM_START, USER, NL, *BYE, IM_END, NL]
        + [IM_START, ASSISTANT, NL, THINK, NL2, END_THINK, NL2, *BYE, IM_END, NL],
        masked([IM_START, SYSTEM, NL, *KIND, IM_END, NL])
        + masked([IM_START, USER, NL, *HI, IM_END, NL])
        + masked([IM_START, ASSISTANT, NL])
        + [*HELLO, IM_END, X]
        + masked([IM_START, USER, NL, *BYE, IM_END, NL])
        + masked([IM_START, ASSISTANT, NL])
        + [THINK, NL2, END_THINK, NL2, *BYE, IM_END, X],
    ),
    "mistral": (
        [BOS_S, INST, *KIND_NL2, *HI, END_INST, *HELLO, EOS_S] + [INST, *BYE, END_INST, *BYE, EOS_S],
        masked([BOS_S, INST, *KIND_NL2, *HI, END_INST])
        + [*HELLO, EOS_S]
        + masked([INST, *BYE, END_INST])
        + [*BYE, EOS_S],
    ),
    # Gemma has no system role: the system message opens the first user turn.
    "gemma": (
        [BOS_G, SOT, USER, NL, *KIND_NL2, *HI, EOT_G, NL]
        + [SOT, MODEL, NL, *HELLO, EOT_G, NL]
        + [SOT, USER, NL, *BYE, EOT_G, NL]
        + [SOT, MODEL, NL, *BYE, EOT_G, NL],
        masked([BOS_G, SOT, USER, NL, *KIND_NL2, *HI, EOT_G, NL])
        + masked([SOT, MODEL, NL])
        + [*HELLO, EOT_G, X]
        + masked([SOT, USER, NL, *BYE, EOT_G, NL])
        + masked([SOT, MODEL, NL])
        + [*BYE, EOT_G, X],
    ),
}
EOT_OF = {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "qwen3": "<|im_end|>",
    "mistral": "</s>",
    "gemma": "<end_of_turn>",
}


def test_every_builtin_is_covered():
    # The five first built-ins, id by id here; every built-in in tests/test_builtin_templates.py.
    assert set(EXPECTED) == set(EOT_OF) == {"chatml", "llama3", "qwen3", "mistral", "gemma"}
    assert set(EXPECTED) <= set(BUILTIN_TEMPLATES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_system_and_two_turns_exact_ids_and_labels(tokenizers, name):
    tokenizer = tokenizers[name]
    out = chat_tokenizer(tokenizer, name)({"messages": CONVERSATION})
    expected_ids, expected_labels = EXPECTED[name]
    assert out["input_ids"] == expected_ids
    assert out["labels"] == expected_labels
    # The same text as transformers renders with the template.
    rendered = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, chat_template=BUILTIN_TEMPLATES[name]
    )
    assert tokenizer.decode(out["input_ids"]) == rendered


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_end_of_turn_token_is_the_family_one(tokenizers, name):
    tokenizer = tokenizers[name]
    chat = chat_tokenizer(tokenizer, name)
    eot_id = tokenizer.convert_tokens_to_ids(EOT_OF[name])
    assert eot_id in chat.eot_ids.values()
    trained = [label for label in chat({"messages": CONVERSATION})["labels"] if label != X]
    # Each trained turn ends with the family's end-of-turn token, never with another control token.
    assert trained.count(eot_id) == 2 and trained[-1] == eot_id
    allowed = {eot_id, THINK, END_THINK} if name == "qwen3" else {eot_id}
    assert set(trained) & chat.special_ids <= allowed


def test_gemma_ends_turns_with_end_of_turn_not_eos(tokenizers):
    tokenizer = tokenizers["gemma"]
    chat = chat_tokenizer(tokenizer, "gemma")
    assert tokenizer.eos_token == "<eos>"
    out = chat({"messages": CONVERSATION})
    assert EOS_G not in out["input_ids"]
    assert [label for label in out["labels"] if label != X] == [*HELLO, EOT_G, *BYE, EOT_G]


def test_llama3_end_of_turn_differs_from_eos(tokenizers):
    chat = chat_tokenizer(tokenizers["llama3"], "llama3")
    # eos (<|end_of_text|>) stays in the set, but the template ends turns with <|eot_id|>.
    assert chat.eot_ids == {"<|end_of_text|>": EOT_TEXT, "<|eot_id|>": EOT}


GENERATION_PROMPTS = {
    "chatml": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "qwen3": "<|im_start|>assistant\n",
    "mistral": "",
    "gemma": "<start_of_turn>model\n",
}


@pytest.mark.parametrize("name", sorted(GENERATION_PROMPTS))
def test_add_generation_prompt(tokenizers, name):
    tokenizer = tokenizers[name]
    template = BUILTIN_TEMPLATES[name]
    prompt = CONVERSATION[:2]
    without = tokenizer.apply_chat_template(prompt, tokenize=False, chat_template=template)
    with_prompt = tokenizer.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=True, chat_template=template
    )
    assert with_prompt == without + GENERATION_PROMPTS[name]
    assert chat_tokenizer(tokenizer, name).generation_prompt == GENERATION_PROMPTS[name]


def test_qwen3_generation_prompt_without_thinking(tokenizers):
    tokenizer = tokenizers["qwen3"]
    rendered = tokenizer.apply_chat_template(
        CONVERSATION[1:2],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
        chat_template=BUILTIN_TEMPLATES["qwen3"],
    )
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # With that prompt the empty think block is prompt, not something the model writes: not trained.
    chat = chat_tokenizer(tokenizer, "qwen3", chat_template_kwargs={"enable_thinking": False})
    trained = [label for label in chat({"messages": CONVERSATION})["labels"] if label != X]
    assert trained == [*HELLO, IM_END, *BYE, IM_END]


@pytest.mark.parametrize("name", ["mistral", "gemma"])
def test_alternation_is_enforced(tokenizers, name):
    chat = chat_tokenizer(tokenizers[name], name)
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Bye"}]}
    with pytest.raises(RowError, match="must alternate"):
        chat(row)


def test_without_system_message_gemma_starts_with_the_user(tokenizers):
    out = chat_tokenizer(tokenizers["gemma"], "gemma")({"messages": CONVERSATION[1:3]})
    assert out["input_ids"] == [BOS_G, SOT, USER, NL, *HI, EOT_G, NL, SOT, MODEL, NL, *HELLO, EOT_G, NL]


def test_unknown_builtin_name_lists_the_choices(tokenizers):
    # A dataset's options reject it when the config is read...
    with pytest.raises(
        ValidationError, match="unknown template 'vicuna'.*chatml, .*gemma, .*llama3, .*mistral, .*qwen3"
    ):
        chat_tokenizer(tokenizers["chatml"], "vicuna")
    # ... and so does the template lookup, for a name that reaches it some other way.
    with pytest.raises(FtkError, match="chat_template: unknown template 'vicuna'.*chatml, .*gemma, .*llama3"):
        resolve_chat_template("vicuna", None, tokenizers["chatml"])
