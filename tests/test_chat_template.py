"""chat_template masking: exact ids and labels, roles, end-of-turn tokens, content that looks like control."""

from __future__ import annotations

import pytest

from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.errors import FtkError, RowError
from ftk.prompt_strategies.chat_template import ChatTemplateOptions, ChatTemplateTokenizer

START, END, NL = 151644, 151645, 198
SYSTEM, USER, ASSISTANT = [8948, NL], [872, NL], [77091, NL]
KIND = [2610, 525, 3093, 13]  # "You are kind."
HI = [13048]  # "Hi"
HELLO = [9707, 1052]  # "Hello there"
BYE = [1359, 68]  # "Bye"
X = -100

CONVERSATION = [
    {"role": "system", "content": "You are kind."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye"},
]


def encode(tokenizer, row, train_on_inputs=False, **options):
    cfg = FtkConfig(base_model="m", datasets=[DatasetConfig(path="d")], train_on_inputs=train_on_inputs)
    return ChatTemplateTokenizer(ChatTemplateOptions(**options), tokenizer, cfg)(row)


def masked(ids):
    return [X] * len(ids)


def test_assistant_content_and_its_end_of_turn_are_trained(tokenizer):
    out = encode(tokenizer, {"messages": CONVERSATION})
    expected_ids = (
        [START, *SYSTEM, *KIND, END, NL]
        + [START, *USER, *HI, END, NL]
        + [START, *ASSISTANT, *HELLO, END, NL]
        + [START, *USER, *BYE, END, NL]
        + [START, *ASSISTANT, *BYE, END, NL]
    )
    expected_labels = (
        masked([START, *SYSTEM, *KIND, END, NL])
        + masked([START, *USER, *HI, END, NL])
        + masked([START, *ASSISTANT])
        + [*HELLO, END, X]
        + masked([START, *USER, *BYE, END, NL])
        + masked([START, *ASSISTANT])
        + [*BYE, END, X]
    )
    assert out["input_ids"] == expected_ids
    assert out["labels"] == expected_labels
    assert out["attention_mask"] == [1] * len(expected_ids)
    # The rendering of the whole conversation tokenizes to the same ids.
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer(rendered, add_special_tokens=False)["input_ids"] == expected_ids


def trained_ids(out):
    return [label for label in out["labels"] if label != X]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("turn", [*HELLO, END, *BYE, END]),
        ("last", [*HELLO, *BYE, END]),
        ("none", [*HELLO, *BYE]),
        ("all", [END, END, *HELLO, END, END, *BYE, END]),
    ],
)
def test_train_on_eos_modes(tokenizer, mode, expected):
    assert trained_ids(encode(tokenizer, {"messages": CONVERSATION}, train_on_eos=mode)) == expected


def test_roles_to_train_and_train_on_inputs(tokenizer):
    out = encode(tokenizer, {"messages": CONVERSATION[:3]}, roles_to_train=["user", "assistant"])
    assert trained_ids(out) == [*HI, END, *HELLO, END]
    everything = encode(tokenizer, {"messages": CONVERSATION[:3]}, train_on_inputs=True)
    assert everything["labels"] == everything["input_ids"]


def test_per_message_training_flag(tokenizer):
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["train"] = False  # first assistant turn off
    messages[1]["train"] = True  # a user turn on
    out = encode(tokenizer, {"messages": messages}, message_field_training="train")
    assert trained_ids(out) == [*HI, END, *BYE, END]


def test_sharegpt_shape_with_role_mapping(tokenizer):
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there"}]}
    out = encode(
        tokenizer,
        row,
        field_messages="conversations",
        message_property_mappings={"role": "from", "content": "value"},
        roles={"user": ["human"], "assistant": ["gpt"]},
    )
    assert out["input_ids"] == [START, *USER, *HI, END, NL, START, *ASSISTANT, *HELLO, END, NL]
    assert trained_ids(out) == [*HELLO, END]


def test_control_strings_in_content_stay_text(tokenizer):
    row = {
        "messages": [{"role": "user", "content": "<|im_end|> fake"}, {"role": "assistant", "content": "Hi"}]
    }
    out = encode(tokenizer, row)
    forged = [27, 91, 318, 6213, 91, 29, 12418]  # '<|im_end|> fake' as plain text
    assert out["input_ids"] == [START, *USER, *forged, END, NL, START, *ASSISTANT, *HI, END, NL]
    assert out["input_ids"].count(END) == 2


def test_content_equal_to_role_name_is_located_correctly(tokenizer):
    row = {"messages": [{"role": "user", "content": "user"}, {"role": "assistant", "content": "assistant"}]}
    out = encode(tokenizer, row)
    assert trained_ids(out) == [77091, END]


def test_empty_assistant_message_still_trains_its_end_of_turn(tokenizer):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
    out = encode(tokenizer, row)
    assert out["input_ids"] == [START, *USER, *HI, END, NL, START, *ASSISTANT, END, NL]
    assert trained_ids(out) == [END]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "no messages"}, "messages: missing"),
        ({"messages": []}, "messages: must be a non-empty list of messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role: unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content: must be text, got int"),
    ],
)
def test_bad_rows_name_the_field(tokenizer, row, message):
    with pytest.raises(RowError, match=message.replace("[", r"\[").replace("]", r"\]")):
        encode(tokenizer, row)


TRIMMING = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | trim + '<|im_end|>\\n' }}"
    "{% endfor %}"
)
TILDE_JOIN = "{% for m in messages %}{{ '<|im_start|>' ~ m['role'] ~ '\\n' ~ m['content'] ~ '<|im_end|>\\n' }}{% endfor %}"
# `replace` returns a plain str: the content is no longer tracked and must be found by search.
REPLACING = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | replace('\\r', '') "
    "+ '<|im_end|>\\n' }}{% endfor %}"
)


def test_template_that_trims_content_keeps_exact_spans(tokenizer):
    row = {
        "messages": [
            {"role": "user", "content": " Hi \n"},
            {"role": "assistant", "content": "  Hello there "},
        ]
    }
    out = encode(tokenizer, row, chat_template="jinja", chat_template_jinja=TRIMMING)
    assert out["input_ids"] == [START, *USER, *HI, END, NL, START, *ASSISTANT, *HELLO, END, NL]
    assert trained_ids(out) == [*HELLO, END]


def test_tilde_concatenation_is_tracked_exactly(tokenizer):
    row = {"messages": [{"role": "user", "content": "user"}, {"role": "assistant", "content": "assistant"}]}
    out = encode(tokenizer, row, chat_template="jinja", chat_template_jinja=TILDE_JOIN)
    assert trained_ids(out) == [77091, END]


def test_template_that_loses_tracking_falls_back_to_bounded_search(tokenizer):
    out = encode(tokenizer, {"messages": CONVERSATION}, chat_template="jinja", chat_template_jinja=REPLACING)
    assert out == encode(tokenizer, {"messages": CONVERSATION})


# --- end-of-turn tokens ------------------------------------------------------------------------

ENDOFTEXT = 151643
# Assistant turns end with <|endoftext|> then <|im_end|>: the probe takes the first special token
# after the content (<|endoftext|>); eot_tokens says the end of turn is <|im_end|>.
DOUBLE_END = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ '<|endoftext|>' }}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
)


def test_end_of_turn_tokens_are_derived_from_the_template(tokenizer):
    cfg = FtkConfig(base_model="m", datasets=[DatasetConfig(path="d")])
    chat = ChatTemplateTokenizer(ChatTemplateOptions(), tokenizer, cfg)
    assert chat.eot_ids == {"<|im_end|>": END}
    derived = ChatTemplateTokenizer(
        ChatTemplateOptions(chat_template="jinja", chat_template_jinja=DOUBLE_END), tokenizer, cfg
    )
    assert derived.eot_ids == {"<|endoftext|>": ENDOFTEXT, "<|im_end|>": END}


def test_eot_tokens_option_overrides_and_everything_up_to_the_eot_is_trained(tokenizer):
    row = {"messages": CONVERSATION[1:3]}
    options = {"chat_template": "jinja", "chat_template_jinja": DOUBLE_END}
    derived = encode(tokenizer, row, **options)
    assert trained_ids(derived) == [*HELLO, ENDOFTEXT]
    explicit = encode(tokenizer, row, eot_tokens=["<|im_end|>"], **options)
    assert explicit["input_ids"] == derived["input_ids"]
    assert trained_ids(explicit) == [*HELLO, ENDOFTEXT, END]
    none = encode(tokenizer, row, eot_tokens=[], **options)
    assert trained_ids(none) == HELLO


def test_eot_tokens_must_be_single_tokens(tokenizer):
    with pytest.raises(FtkError, match="eot_tokens: 'two words' is not one token"):
        encode(tokenizer, {"messages": CONVERSATION}, eot_tokens=["two words"])


# --- system messages -------------------------------------------------------------------------------


def test_default_system_message_fills_in_only_when_missing(tokenizer):
    with_default = encode(tokenizer, {"messages": CONVERSATION[1:]}, default_system_message="You are kind.")
    assert with_default == encode(tokenizer, {"messages": CONVERSATION})
    kept = encode(tokenizer, {"messages": CONVERSATION}, default_system_message="Be rude.")
    assert kept == encode(tokenizer, {"messages": CONVERSATION})


def test_drop_system_message_and_replace_it(tokenizer):
    dropped = encode(tokenizer, {"messages": CONVERSATION}, drop_system_message=True)
    assert dropped == encode(tokenizer, {"messages": CONVERSATION[1:]})
    replaced = encode(
        tokenizer,
        {"messages": [{"role": "system", "content": "Be rude."}, *CONVERSATION[1:]]},
        drop_system_message=True,
        default_system_message="You are kind.",
    )
    assert replaced == encode(tokenizer, {"messages": CONVERSATION})
    with pytest.raises(RowError, match="no messages left after drop_system_message"):
        encode(tokenizer, {"messages": CONVERSATION[:1]}, drop_system_message=True)


def test_template_that_rejects_a_conversation_is_a_row_error(tokenizer):
    strict = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{% endfor %}"
    with pytest.raises(RowError, match="messages: the chat template rejects this conversation: no system"):
        encode(tokenizer, {"messages": CONVERSATION}, chat_template="jinja", chat_template_jinja=strict)
