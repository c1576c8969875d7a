"""Token ids where a message's text meets template text: the tokenizer's own, not a seam of ftk's.

At inference a prompt is tokenized as one text (``apply_chat_template(..., tokenize=True)``), so
the untrained text of a training row must get exactly those ids, even where BPE merges a
message's leading or trailing whitespace with the template text next to it (``user\\n`` then a
content starting with ``\\n``: one ``\\n\\n`` token).  A trained reply gets the ids of its own text:
what a model generating after the prompt produces.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.errors import RowError
from ftk.prompt_strategies.chat_template import IGNORE_INDEX, ChatTemplateOptions, ChatTemplateTokenizer
from ftk.prompt_strategies.templates import BUILTIN_TEMPLATES
from tests.test_builtin_templates import family_tokenizer

X = IGNORE_INDEX
START, END, NL, NL2 = 151644, 151645, 198, 271  # <|im_start|>, <|im_end|>, "\n", "\n\n"
USER, ASSISTANT = 872, 77091
HELLO_SPACE = [9707, 220]  # "Hello", " "


def chat(tokenizer, train_on_inputs: bool = False, **options) -> ChatTemplateTokenizer:
    cfg = FtkConfig(base_model="m", datasets=[DatasetConfig(path="d")], train_on_inputs=train_on_inputs)
    return ChatTemplateTokenizer(ChatTemplateOptions(**options), tokenizer, cfg)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The ids a model is given at inference: the tokenizer's own encoding of the prompt."""
    return list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    )


def text_ids(tokenizer, text: str, as_text: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=as_text)["input_ids"]


def test_content_starting_with_a_newline_merges_with_the_template_newline(tokenizer):
    messages = [{"role": "user", "content": "\nHello "}, {"role": "assistant", "content": "Hi"}]
    out = chat(tokenizer)({"messages": messages})
    # "<|im_start|>user\n" + "\nHello ": one "\n\n" token, as the tokenizer encodes the prompt.
    prompt = [START, USER, NL2, *HELLO_SPACE, END, NL, START, ASSISTANT, NL]
    assert out["input_ids"][: len(prompt)] == prompt == prompt_ids(tokenizer, messages[:1])
    assert out["labels"][: len(prompt)] == [X] * len(prompt)
    # Nothing but the seam changes: the whole conversation has the tokenizer's ids.
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert out["input_ids"] == text_ids(tokenizer, rendered)


def test_reply_gets_the_ids_generated_after_the_prompt(tokenizer):
    reply = " \nHi there\n"
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": reply}]
    out = chat(tokenizer)({"messages": messages})
    prompt = prompt_ids(tokenizer, messages[:1])
    assert prompt[-2:] == [ASSISTANT, NL]
    # The prompt ends with its own "\n"; the reply is its own text, then the end of turn: what a
    # model given the prompt writes.  (The whole conversation's text would merge the prompt's
    # "\n" with the reply's " \n" into one "\n \n" token that no prompt ever ends with.)
    assert out["input_ids"] == [*prompt, *text_ids(tokenizer, reply), END, NL]
    assert out["labels"] == [X] * len(prompt) + [*text_ids(tokenizer, reply), END, X]
    whole = text_ids(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))
    assert whole != out["input_ids"] and 26809 in whole  # "\n \n"
    # train_on_inputs changes the labels, never the ids.
    everything = chat(tokenizer, train_on_inputs=True)({"messages": messages})
    assert everything["input_ids"] == out["input_ids"] == everything["labels"]


def test_trained_user_content_is_cut_from_its_header(tokenizer):
    # A trained user message is trained from its content on: its header is the prompt the model
    # is given, tokenized alone; the content is tokenized as its own text.
    messages = [{"role": "user", "content": "\nHello "}, {"role": "assistant", "content": "Hi"}]
    out = chat(tokenizer, roles_to_train=["user", "assistant"])({"messages": messages})
    assert out["input_ids"][:3] == [START, USER, NL]
    assert out["labels"][:6] == [X, X, X, NL, *HELLO_SPACE]


def test_control_string_in_content_stays_text_next_to_the_template(tokenizer):
    messages = [{"role": "user", "content": "\n<|im_end|>"}, {"role": "assistant", "content": "Hi"}]
    tokenized = chat(tokenizer)
    out = tokenized({"messages": messages})
    # The content is text (no second <|im_end|>), and it still merges with the template's "\n".
    forged = text_ids(tokenizer, "user\n\n<|im_end|>", as_text=True)
    assert out["input_ids"][: 1 + len(forged) + 1] == [START, *forged, END]
    assert forged[1] == NL2
    assert out["input_ids"].count(END) == 2
    chunks = tokenized.explain(messages)
    content = next(chunk for chunk in chunks if chunk.kind == "content")
    assert not set(content.ids) & tokenized.special_ids


def test_explain_lists_a_merged_token_with_the_chunk_it_starts_in(tokenizer):
    messages = [{"role": "user", "content": "\nHello "}]
    chunks = chat(tokenizer).explain(messages)
    assert [(chunk.kind, chunk.text, chunk.ids) for chunk in chunks[:2]] == [
        ("template", "<|im_start|>user\n", [START, USER, NL2]),
        ("content", "\nHello ", HELLO_SPACE),
    ]


# --- every built-in template, random conversations --------------------------------------------------

WHITESPACE = [" ", "  ", "\n", "\n\n", "\t", "\r\n", " \n", "\n ", "\u00a0", "\u3000"]
WORDS = ["Hi", "user", "assistant", ".", "é", "你好", "🙂", "e\u0301", "x" * 20, "123", "'s"]
characters = st.characters(exclude_categories=("Cs",))
content = st.lists(
    st.one_of(st.sampled_from(WHITESPACE), st.sampled_from(WORDS), st.text(characters, max_size=4)),
    max_size=5,
).map("".join)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, str]]:
    """An optional system message, alternating turns ending with a reply, maybe a repeated role."""
    roles = ["system"] * draw(st.booleans())
    for _ in range(draw(st.integers(1, 3))):
        roles += ["user", "assistant"]
    if draw(st.booleans()):
        at = draw(st.integers(len(roles) - 2, len(roles) - 1))
        roles.insert(at, roles[at])  # consecutive turns of one role
    return [{"role": role, "content": draw(content)} for role in roles]


@cache
def family_chat(
    model_dir: Path, name: str, train_on_eos: str, roles: tuple[str, ...]
) -> ChatTemplateTokenizer:
    return chat(
        family_tokenizer(model_dir, name),
        chat_template=name,
        train_on_eos=train_on_eos,
        roles_to_train=list(roles),
    )


def label_runs(out: dict) -> list[tuple[bool, list[int]]]:
    """``(trained, ids)`` of each maximal stretch of trained or untrained tokens."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(out["input_ids"], out["labels"], strict=True):
        trained = label != X
        if not runs or runs[-1][0] != trained:
            runs.append((trained, []))
        runs[-1][1].append(token)
    return runs


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_every_span_has_the_tokenizers_ids_for_its_text(small_vocab_model_dir, name):
    tokenizer = family_tokenizer(small_vocab_model_dir, name)

    @settings(
        max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.filter_too_much]
    )
    @given(
        messages=conversations(),
        train_on_eos=st.sampled_from(["turn", "all", "none"]),
        roles=st.sampled_from([("assistant",), ("user", "assistant")]),
    )
    def check(messages, train_on_eos, roles):
        tokenized = family_chat(small_vocab_model_dir, name, train_on_eos, roles)
        try:
            out = tokenized({"messages": messages})
        except RowError:
            assume(False)  # a conversation this template does not accept (alternation, roles)
        for trained, ids in label_runs(out):
            # Untrained: the ids the tokenizer gives that text (as it gives a prompt); trained:
            # the ids of the text on its own (as a model writes it after the prompt).
            assert ids == text_ids(tokenizer, tokenizer.decode(ids)), (trained, tokenizer.decode(ids))

    check()


def test_the_prompt_of_the_first_reply_is_the_tokenizers_encoding_of_it(tokenizer):
    # Later prompts hold earlier replies, which are trained and keep the ids a model writes them
    # with (their first token can differ from the whole text's, see the reply test above); the
    # text before the first reply is all prompt.
    tokenized = chat(tokenizer, train_on_eos="all")

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(messages=conversations())
    def check(messages):
        out = tokenized({"messages": messages})
        first = next(index for index, message in enumerate(messages) if message["role"] == "assistant")
        prompt = prompt_ids(tokenizer, messages[:first])
        assert out["input_ids"][: len(prompt)] == prompt
        assert out["labels"][len(prompt) - 1] == X
        assert out["labels"][len(prompt)] != X  # the reply starts right after the prompt

    check()
