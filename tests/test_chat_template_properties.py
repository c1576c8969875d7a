"""Property tests for chat_template masking over generated conversations.

For random conversations (roles in an order the template accepts; contents mixing random unicode,
empty strings, whitespace, role names and control-token strings):

* the ids decode to exactly the text transformers renders with the template;
* no content is tokenized with a control token, so a content cannot forge a turn;
* the trained tokens decode to exactly the trained messages' contents, each followed by its
  end-of-turn token where ``train_on_eos`` trains it.

Text is compared after decoding because a control string in a content is, by design, not the
control token the template's own rendering would give when tokenized whole.  The tokenizer
NFC-normalises text, so contents are generated NFC-normal and without combining marks or Hangul
jamo (which could compose with the template text next to them).
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.prompt_strategies.chat_template import IGNORE_INDEX, ChatTemplateOptions, ChatTemplateTokenizer
from ftk.prompt_strategies.templates import BUILTIN_TEMPLATES

EOT = {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "qwen3": "<|im_end|>",
    "gemma": "<end_of_turn>",
    "mistral": "</s>",
}
TRIMS = {"llama3", "gemma", "mistral"}  # templates that trim contents (mistral: the system message only)
ALTERNATING = {"gemma", "mistral"}

CONTROL_STRINGS = [
    "<|im_end|>",
    "<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<end_of_turn>",
    "<start_of_turn>model\n",
    "[INST]",
    "</s>",
    "<tool_call>",
]
PLAIN_BITS = ["user", "assistant", "system", "model", " ", "  ", "\n", "\n\n", "\t", "\r\n", "Hi", "."]
JAMO = ((0x1100, 0x11FF), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))


def _plain_char(char: str) -> bool:
    return not any(lo <= ord(char) <= hi for lo, hi in JAMO)


characters = st.characters(exclude_categories=("Cs", "Mn", "Mc", "Me")).filter(_plain_char)
content = st.lists(
    st.one_of(st.text(characters, max_size=6), st.sampled_from(CONTROL_STRINGS), st.sampled_from(PLAIN_BITS)),
    max_size=5,
).map(lambda parts: unicodedata.normalize("NFC", "".join(parts)))


@st.composite
def conversations(draw: st.DrawFn, alternating: bool) -> list[dict[str, str]]:
    """A conversation a template of the given kind accepts."""
    if alternating:
        turns = draw(st.integers(1, 5))
        roles = ["system"] * draw(st.booleans()) + [
            "user" if i % 2 == 0 else "assistant" for i in range(turns)
        ]
    else:
        roles = draw(
            st.lists(st.sampled_from(["system", "user", "assistant", "tool"]), min_size=1, max_size=6)
        )
    return [{"role": role, "content": draw(content)} for role in roles]


_CHATS: dict[tuple, ChatTemplateTokenizer] = {}


def chat_for(tokenizers, name: str, train_on_eos: str = "turn", roles: tuple[str, ...] = ("assistant",)):
    key = (name, train_on_eos, roles)
    if key not in _CHATS:
        cfg = FtkConfig(base_model="m", datasets=[DatasetConfig(path="d")])
        options = ChatTemplateOptions(
            chat_template=name, train_on_eos=train_on_eos, roles_to_train=list(roles)
        )
        _CHATS[key] = ChatTemplateTokenizer(options, tokenizers[name], cfg)
    return _CHATS[key]


def shown(name: str, messages: list[dict[str, str]], index: int) -> str:
    """The content of ``messages[index]`` as the template renders it."""
    message = messages[index]
    if name in TRIMS and (name != "mistral" or (message["role"] == "system" and index == 0)):
        return message["content"].strip()
    if name == "qwen3" and message["role"] == "assistant" and index == len(messages) - 1:
        # The final assistant turn gets a think block when the conversation has a user message,
        # and the content after it loses its leading newlines.
        if any(m["role"] == "user" for m in messages):
            return message["content"].lstrip("\n")
    return message["content"]


def has_end_of_turn(name: str, message: dict[str, str], index: int) -> bool:
    if name == "gemma":  # the system message is folded into the first user turn
        return not (message["role"] == "system" and index == 0)
    if name == "mistral":  # only assistant turns end with a token
        return message["role"] == "assistant"
    return True


PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@pytest.mark.parametrize("name", ["chatml", "llama3", "qwen3", "gemma", "mistral"])
def test_ids_decode_to_the_rendering_and_contents_stay_text(tokenizers, name):
    tokenizer = tokenizers[name]
    chat = chat_for(tokenizers, name)

    @PROPERTY_SETTINGS
    @given(messages=conversations(name in ALTERNATING))
    def check(messages):
        out = chat({"messages": messages})
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, chat_template=BUILTIN_TEMPLATES[name]
        )
        assert tokenizer.decode(out["input_ids"]) == rendered
        chunks = chat.explain([dict(message, train=None) for message in messages])
        assert [i for chunk in chunks for i in chunk.ids] == out["input_ids"]
        for chunk in chunks:
            if chunk.kind in ("content", "reasoning_content", "data"):
                assert not set(chunk.ids) & chat.special_ids, chunk
            if chunk.kind == "content":
                assert chunk.text == shown(name, messages, chunk.message)
        # The chunks' texts, in order, are the rendering; a token that BPE merges across a chunk
        # boundary (as the whole text merges it) is listed with the chunk it starts in.
        assert "".join(chunk.text for chunk in chunks) == rendered

    check()


@pytest.mark.parametrize("name", ["chatml", "llama3", "gemma", "mistral"])
def test_trained_tokens_are_the_trained_contents_and_their_end_of_turn(tokenizers, name):
    tokenizer = tokenizers[name]
    eot = EOT[name]

    @PROPERTY_SETTINGS
    @given(
        messages=conversations(name in ALTERNATING),
        train_on_eos=st.sampled_from(["turn", "all", "last", "none"]),
        roles=st.sampled_from(
            [("assistant",), ("user", "assistant"), ("system", "user", "assistant", "tool")]
        ),
    )
    def check(messages, train_on_eos, roles):
        chat = chat_for(tokenizers, name, train_on_eos, roles)
        out = chat({"messages": messages})
        trained = [i for i, message in enumerate(messages) if message["role"] in roles]
        last = trained[-1] if trained else None
        expected = ""
        for index, message in enumerate(messages):
            if index in trained:
                expected += shown(name, messages, index)
            eot_trained = (
                train_on_eos == "all"
                or (train_on_eos == "turn" and index in trained)
                or (train_on_eos == "last" and index == last)
            )
            if eot_trained and has_end_of_turn(name, message, index):
                expected += eot
        assert tokenizer.decode([label for label in out["labels"] if label != IGNORE_INDEX]) == expected
        assert all(
            label in (IGNORE_INDEX, token)
            for label, token in zip(out["labels"], out["input_ids"], strict=True)
        )

    check()


names = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=8)


@st.composite
def tool_conversations(draw: st.DrawFn) -> list[dict]:
    """A Qwen3 conversation with reasoning, tool calls (random arguments) and tool results."""
    messages: list[dict] = [{"role": "system", "content": draw(content)}] * draw(st.booleans())
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(content)})
        assistant: dict = {"role": "assistant", "content": draw(content)}
        if draw(st.booleans()):
            assistant["reasoning_content"] = draw(content)
        calls = draw(st.lists(st.tuples(names, st.dictionaries(names, content, max_size=2)), max_size=2))
        if calls:
            assistant["tool_calls"] = [
                {"type": "function", "function": {"name": name, "arguments": arguments}}
                for name, arguments in calls
            ]
        messages.append(assistant)
        messages += [{"role": "tool", "content": draw(content)} for _ in calls]
    return messages


def test_qwen3_tools_and_reasoning_decode_to_the_rendering(tokenizers):
    tokenizer = tokenizers["qwen3"]
    chat = chat_for(tokenizers, "qwen3")

    @PROPERTY_SETTINGS
    @given(
        messages=tool_conversations(),
        tools=st.none()
        | st.lists(st.fixed_dictionaries({"name": names, "description": content}), max_size=2),
    )
    def check(messages, tools):
        out = chat({"messages": messages, "tools": tools})
        rendered = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, chat_template=BUILTIN_TEMPLATES["qwen3"]
        )
        assert tokenizer.decode(out["input_ids"]) == rendered
        chunks = chat.explain([dict(message, train=None) for message in messages], tools or None)
        assert [i for chunk in chunks for i in chunk.ids] == out["input_ids"]
        assert all(
            not set(chunk.ids) & chat.special_ids
            for chunk in chunks
            if chunk.kind in ("content", "reasoning_content", "data")
        )
        # Every assistant turn's end of turn is trained, and nothing of the tool results is.
        eots = {chunk.message: chunk.trained for chunk in chunks if chunk.kind == "eot"}
        assistants = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        assert all(eots.get(i) for i in assistants)
        assert not any(
            chunk.trained
            for chunk in chunks
            if chunk.message >= 0 and messages[chunk.message]["role"] == "tool"
        )

    check()
