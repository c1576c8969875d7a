"""axolotl's dataset keys and formats: ShareGPT roles by default, split slices of local sources,
``alpaca:chat``/``alpaca:phi``/``jeopardy`` and relatives, the older message field names,
``field_thinking``/``template_thinking_key``, and the top-level chat_template defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.data.pipeline import prepare_data
from ftk.core.data.sources import load_source
from ftk.core.errors import FtkError, RowError
from ftk.prompt_strategies.alpaca import PREAMBLE_NO_INPUT, PREAMBLE_WITH_INPUT
from ftk.prompt_strategies.chat_rows import MessageReader
from ftk.prompt_strategies.chat_template import ChatTemplateOptions
from ftk.prompt_strategies.chat_template import build as chat_build
from tests.helpers import builtin_manager, make_config, write_config

X = -100
START, END, PAD, NL = 151644, 151645, 151643, 198
USER, ASSISTANT, SYSTEM = [872, NL], [77091, NL], [8948, NL]
HI, HELLO = [13048], [9707, 1052]  # "Hi", "Hello there"
BASE = dict(sequence_len=256, micro_batch_size=None, max_steps=None, seed=None)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def text_ids(tokenizer, text: str) -> list[int]:
    """``text`` tokenized whole, as plain text (what axolotl gets for text without control strings)."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def trained(out: dict) -> list[int]:
    return [i for i, label in zip(out["input_ids"], out["labels"], strict=True) if label != X]


def chat(tokenizer, row, cfg: FtkConfig | None = None, **options):
    dataset = DatasetConfig(path="d")
    dataset._options = ChatTemplateOptions(**options)
    cfg = cfg or FtkConfig(base_model="m", datasets=[dataset])
    return chat_build(dataset, tokenizer, cfg)(row)


def styled(type_name: str, tokenizer, row: dict, train_on_inputs: bool = False, **options):
    registry = builtin_manager().collect_registrations()
    strategy = registry.strategies[type_name]
    dataset = DatasetConfig(path="d", type=type_name)
    if strategy.options_model is not None:
        dataset._options = strategy.options_model(**options)
    cfg = FtkConfig(base_model="m", datasets=[dataset], train_on_inputs=train_on_inputs)
    return strategy.build(dataset, tokenizer, cfg)(row)


# --- ShareGPT roles by default ---------------------------------------------------------------

SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Be kind."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello there"},
    ]
}
SHAREGPT_KEYS = dict(
    field_messages="conversations", message_property_mappings={"role": "from", "content": "value"}
)


def test_sharegpt_roles_map_without_a_roles_key(tokenizer):
    out = chat(tokenizer, SHAREGPT, **SHAREGPT_KEYS)
    kind = text_ids(tokenizer, "Be kind.")
    assert out["input_ids"] == [
        *[START, *SYSTEM, *kind, END, NL],
        *[START, *USER, *HI, END, NL],
        *[START, *ASSISTANT, *HELLO, END, NL],
    ]
    assert trained(out) == [*HELLO, END]
    # The same as spelling the mapping out.
    explicit = chat(tokenizer, SHAREGPT, roles={"user": ["human"], "assistant": ["gpt"]}, **SHAREGPT_KEYS)
    assert explicit == out


def test_a_roles_key_replaces_the_default_names(tokenizer):
    with pytest.raises(
        RowError, match=r"^conversations\[2\]\.from: unknown role 'gpt'; map it with `roles:`$"
    ):
        chat(tokenizer, SHAREGPT, roles={"user": ["human"], "assistant": ["bot"]}, **SHAREGPT_KEYS)


def test_roles_to_train_takes_roles_not_the_default_data_names():
    with pytest.raises(
        ValidationError,
        match="'gpt' is a name in the data; roles_to_train takes the role it maps to, 'assistant'",
    ):
        ChatTemplateOptions(roles_to_train=["gpt"])


# --- split slices of local sources -----------------------------------------------------------


def _numbered(path: Path, count: int) -> Path:
    rows = [{"instruction": f"n{i}", "output": str(i)} for i in range(count)]
    return write_jsonl(path, rows)


@pytest.mark.parametrize(
    ("split", "kept"),
    [
        ("train", list(range(40))),
        ("train[:20%]", list(range(8))),
        ("train[10:15]", list(range(10, 15))),
        ("train[:95%]", list(range(38))),
        ("train[-5%:]", [38, 39]),
        ("train[:2]+train[-1:]", [0, 1, 39]),
    ],
)
def test_split_slices_a_local_file(tmp_path, split, kept):
    data = _numbered(tmp_path / "rows.jsonl", 40)
    rows = load_source(DatasetConfig(path=str(data), type="alpaca", split=split), "datasets[0]")
    assert [int(row["output"]) for row in rows] == kept


def test_split_slices_a_data_folder_and_a_saved_dataset(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    _numbered(folder / "train.jsonl", 10)
    _numbered(folder / "test.jsonl", 4)
    rows = load_source(DatasetConfig(path=str(folder), type="alpaca", split="test[1:3]"), "datasets[0]")
    assert [row["output"] for row in rows] == ["1", "2"]
    with pytest.raises(FtkError) as info:
        load_source(DatasetConfig(path=str(folder), type="alpaca", split="validation[:10%]"), "datasets[0]")
    assert str(info.value) == f"datasets[0].split: 'validation' not in {str(folder)!r} (has train, test)"


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("test", "datasets[0].split: 'test' not in '{data}' (has train)"),
        ("train[5:5]", "datasets[0].split: 'train[5:5]' selects no rows of '{data}' (rows: train: 40)"),
        (
            "train[abc]",
            "datasets[0].split: 'train[abc]' is neither a split name nor a slice of one (e.g. train, "
            "train[:20%], train[10:100], train[-5%:]): Unrecognized instruction format: train[abc]",
        ),
    ],
)
def test_bad_split_is_an_error_naming_the_splits(tmp_path, split, message):
    data = _numbered(tmp_path / "rows.jsonl", 40)
    with pytest.raises(FtkError) as info:
        load_source(DatasetConfig(path=str(data), type="alpaca", split=split), "datasets[0]")
    assert str(info.value) == message.format(data=data)


def test_split_changes_what_is_tokenized_and_the_cache_key(tmp_path, tiny_model_dir, tokenizer):
    data = _numbered(tmp_path / "rows.jsonl", 40)

    def prepare(split: str):
        entries = [{"path": data, "type": "alpaca", "split": split}]
        cfg, manager = load_config(write_config(tmp_path, tiny_model_dir, entries, **BASE))
        return prepare_data(cfg, tokenizer, manager.collect_registrations())

    whole, part, again = prepare("train"), prepare("train[:25%]"), prepare("train[:25%]")
    assert (len(whole.train), len(part.train)) == (40, 10)
    assert part.cache_dir != whole.cache_dir and not part.from_cache
    assert again.from_cache and again.cache_dir == part.cache_dir


def test_a_bad_row_of_a_slice_is_named_by_its_line_in_the_file(tmp_path, tiny_model_dir, capsys):
    rows = [{"instruction": f"n{i}", "output": str(i)} for i in range(20)]
    rows[12] = {"instruction": "no output"}
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    entries = [{"path": data, "type": "alpaca:chat", "split": "train[10:]"}]
    assert main(["preprocess", str(write_config(tmp_path, tiny_model_dir, entries, **BASE))]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"error: {data}:13: output: missing or null"
    assert "Traceback" not in err


# --- alpaca:<style>, jeopardy and relatives --------------------------------------------------

SAY_HI = {"instruction": "Say hi", "input": "", "output": "Hello there"}
ADD = {"instruction": "Add", "input": "2 and 3", "output": "5"}
PHI_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def _check(out: dict, prompt: list[int], response: list[int], eos: int = END) -> None:
    assert out["input_ids"] == [*prompt, *response, eos]
    assert out["labels"] == [X] * len(prompt) + [*response, eos]
    assert out["attention_mask"] == [1] * len(out["input_ids"])


def test_alpaca_chat_is_the_user_assistant_layout(tokenizer):
    out = styled("alpaca:chat", tokenizer, SAY_HI)
    prompt = f"SYSTEM: {PREAMBLE_NO_INPUT}\nUSER: Say hi\nASSISTANT:"
    _check(out, text_ids(tokenizer, prompt), HELLO)
    assert tokenizer.decode(out["input_ids"][:-3]).endswith("\nASSISTANT:")  # the response follows directly
    out = styled("alpaca:chat", tokenizer, ADD)
    _check(out, text_ids(tokenizer, f"SYSTEM: {PREAMBLE_WITH_INPUT}\nUSER: Add\n2 and 3\nASSISTANT:"), [20])
    # train_on_inputs trains the prompt too; a system prompt replaces the preamble.
    out = styled("alpaca:chat", tokenizer, SAY_HI, train_on_inputs=True, system_prompt="Be brief.")
    assert out["labels"] == out["input_ids"]
    assert tokenizer.decode(out["input_ids"]).startswith("SYSTEM: Be brief.\nUSER: Say hi\nASSISTANT:")


def test_alpaca_phi_layout_with_its_control_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": PHI_TOKENS})
    system, user, assistant, end = tokenizer.convert_tokens_to_ids(PHI_TOKENS)
    out = styled("alpaca:phi", tokenizer, SAY_HI)
    prompt = [system, NL, *text_ids(tokenizer, PREAMBLE_NO_INPUT), end, NL, user, NL]
    prompt += [*text_ids(tokenizer, "Say hi"), end, NL, assistant, NL]
    _check(out, prompt, HELLO)
    # The whole prompt tokenized at once (as axolotl does) gives the same ids.
    whole = f"<|system|>\n{PREAMBLE_NO_INPUT}<|end|>\n<|user|>\nSay hi<|end|>\n<|assistant|>\n"
    assert tokenizer(whole, add_special_tokens=False)["input_ids"] == prompt
    # With an input: axolotl's layout puts it right after the instruction's <|end|>.
    out = styled("alpaca:phi", tokenizer, ADD)
    assert tokenizer.decode(out["input_ids"]) == (
        f"<|system|>\n{PREAMBLE_WITH_INPUT}<|end|>\n<|user|>\nAdd<|end|>2 and 3<|assistant|>5<|im_end|>"
    )
    # A control string typed in a row stays text.
    out = styled("alpaca:phi", tokenizer, {"instruction": "Say <|end|> hi", "output": "ok"})
    assert out["input_ids"].count(end) == 2


def test_alpaca_chatml_and_instruct(tokenizer):
    out = styled("alpaca:chatml", tokenizer, SAY_HI)
    prompt = [START, *SYSTEM, *text_ids(tokenizer, PREAMBLE_NO_INPUT), END, NL, START, *USER]
    prompt += [*text_ids(tokenizer, "Say hi"), END, NL, START, *ASSISTANT]
    _check(out, prompt, HELLO)
    # alpaca:instruct is ftk's own alpaca layout.
    assert styled("alpaca:instruct", tokenizer, ADD) == styled("alpaca", tokenizer, ADD)


def test_jeopardy_asks_with_the_category_and_answers_what_is(tokenizer):
    row = {"question": "This planet is red", "category": "SPACE", "answer": "Mars", "air_date": "2004"}
    out = styled("jeopardy", tokenizer, row)
    prompt = f"{PREAMBLE_WITH_INPUT}\n\n### Instruction:\nThis planet is red\n\n### Input:\nSPACE\n\n### Response:\n"
    _check(out, text_ids(tokenizer, prompt), text_ids(tokenizer, "what is Mars"))
    out = styled("jeopardy:chat", tokenizer, row)
    assert tokenizer.decode(trained(out)) == "what is Mars<|im_end|>"
    assert tokenizer.decode(out["input_ids"]).endswith(
        "USER: This planet is red\nSPACE\nASSISTANT:what is Mars<|im_end|>"
    )


@pytest.mark.parametrize(
    ("type_name", "row", "text"),
    [
        (
            "oasst",
            {"INSTRUCTION": "Hi", "RESPONSE": "Hello"},
            f"{PREAMBLE_NO_INPUT}\n\n### Instruction:\nHi\n\n### Response:\nHello",
        ),
        (
            "gpteacher:chat",
            {"instruction": "Hi", "input": "", "response": "Hello"},
            f"SYSTEM: {PREAMBLE_NO_INPUT}\nUSER: Hi\nASSISTANT:Hello",
        ),
        (
            "summarizetldr",
            {"article": "Long text.", "summary": "Short."},
            "USER: Summarize the following article as a TL;DR.\nLong text.\nASSISTANT:Short.",
        ),
        (
            "explainchoice",
            {"question": "2+2?", "choices": ["3", "4"], "solution": "4", "explanation": None},
            "Choose the answer that best answers the question. Explain your reasoning.\n\n\n"
            '### Instruction:\n2+2?\n\n### Input:\n- "3"\n- "4"\n\n### Response:\n4',
        ),
        (
            "concisechoice",
            {"question": "2+2?", "choices": ["3", "4"], "explanation": "It is 4."},
            "Choose the answer that best answers the question. Be concise in your response.\n\n"
            'USER: 2+2?\n- "3"\n- "4"\nASSISTANT:It is 4.',
        ),
    ],
)
def test_other_axolotl_instruction_formats(tokenizer, type_name, row, text):
    out = styled(type_name, tokenizer, row)
    assert tokenizer.decode(out["input_ids"]) == text + "<|im_end|>"
    response = text.rsplit("\n", 1)[-1].rsplit(":", 1)[-1]
    assert tokenizer.decode(trained(out)) == response + "<|im_end|>"


def test_instruction_formats_name_a_missing_column(tokenizer):
    with pytest.raises(RowError) as info:
        styled("jeopardy", tokenizer, {"question": "Q", "category": "C"})
    assert str(info.value) == "answer: missing: no such column (columns: question, category)"


def test_alpaca_style_options_and_unknown_styles(tiny_model_dir):
    cfg = make_config(datasets=[{"path": "x.jsonl", "type": "alpaca:chat", "field_output": "reply"}])
    assert cfg.datasets[0].options.field_output == "reply"
    with pytest.raises(FtkError) as info:
        make_config(datasets=[{"path": "x.jsonl", "type": "jeopardy", "field_output": "reply"}])
    assert "datasets[0].field_output: unknown key" in str(info.value)  # jeopardy has fixed columns
    with pytest.raises(FtkError) as info:
        make_config(datasets=[{"path": "x.jsonl", "type": "alpaca:vicuna"}])
    message = str(info.value)
    assert "datasets[0].type: unknown strategy 'alpaca:vicuna'" in message
    assert "alpaca:chat, alpaca:chatml, alpaca:instruct, alpaca:phi" in message
    assert "jeopardy" in message and "reflection" not in message


# --- older message field names, reasoning keys ------------------------------------------------


def test_message_field_role_and_content_are_the_mapping(tokenizer):
    legacy = chat(
        tokenizer,
        SHAREGPT,
        field_messages="conversations",
        message_field_role="from",
        message_field_content="value",
    )
    assert legacy == chat(tokenizer, SHAREGPT, **SHAREGPT_KEYS)
    options = ChatTemplateOptions(message_field_role="from", message_property_mappings={"content": "value"})
    assert options.message_property_mappings == {"role": "from", "content": "value"}


def test_conflicting_message_field_names_are_a_config_error(tmp_path, tiny_model_dir):
    entries = [
        {"path": "x.jsonl", "message_field_role": "from", "message_property_mappings": {"role": "speaker"}}
    ]
    with pytest.raises(FtkError) as info:
        load_config(write_config(tmp_path, tiny_model_dir, entries))
    assert (
        "datasets[0]: message_field_role: 'from' conflicts with message_property_mappings.role: 'speaker' "
        "(both name the message key of the role; keep one)"
    ) in str(info.value)
    with pytest.raises(
        ValidationError,
        match="field_thinking: 'trace' conflicts with message_property_mappings.reasoning_content: 'r'",
    ):
        ChatTemplateOptions(field_thinking="trace", message_property_mappings={"reasoning_content": "r"})


THOUGHT = {
    "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there", "trace": "Greet back"},
    ]
}


def test_field_thinking_gives_the_reasoning_to_a_template_that_renders_it(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    think, end_think = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    out = chat(tokenizer, THOUGHT, chat_template="qwen3", field_thinking="trace")
    greet = text_ids(tokenizer, "Greet back")
    assistant = [think, NL, *greet, NL, end_think, 271, *HELLO, END]  # 271: "\n\n"
    assert out["input_ids"] == [START, *USER, *HI, END, NL, START, *ASSISTANT, *assistant, NL]
    assert trained(out) == assistant
    # Without it the message key "trace" is not read: an empty think block.
    plain = chat(tokenizer, THOUGHT, chat_template="qwen3")
    assert greet[0] not in plain["input_ids"]
    # train_on_reasoning: false leaves the reasoning untrained.
    out = chat(tokenizer, THOUGHT, chat_template="qwen3", field_thinking="trace", train_on_reasoning=False)
    assert trained(out) == [*HELLO, END]


def test_template_thinking_key_names_the_key_the_template_reads(tokenizer):
    jinja = (
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}"
        "{% if m.reasoning %}{{ '[' + m.reasoning + ']' }}{% endif %}"
        "{{ m.content + '<|im_end|>\\n' }}{% endfor %}"
    )
    keys = dict(chat_template="jinja", chat_template_jinja=jinja, field_thinking="trace")
    assert "[Greet back]" not in tokenizer.decode(chat(tokenizer, THOUGHT, **keys)["input_ids"])
    out = chat(tokenizer, THOUGHT, template_thinking_key="reasoning", **keys)
    assert tokenizer.decode(out["input_ids"]).endswith("assistant\n[Greet back]Hello there<|im_end|>\n")
    messages = MessageReader(ChatTemplateOptions(field_thinking="trace", template_thinking_key="reasoning"))(
        THOUGHT
    )
    assert messages[1]["reasoning"] == messages[1]["reasoning_content"] == "Greet back"


def test_drop_system_message_removes_system_turns(tokenizer):
    out = chat(tokenizer, SHAREGPT, drop_system_message=True, **SHAREGPT_KEYS)
    assert out["input_ids"] == [START, *USER, *HI, END, NL, START, *ASSISTANT, *HELLO, END, NL]


# --- top-level chat_template defaults ---------------------------------------------------------

CHAT_ROW = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}


def test_top_level_eot_tokens_is_every_chat_datasets_default(tokenizer):
    cfg = make_config(
        eot_tokens=["<|endoftext|>"],
        datasets=[{"path": "x.jsonl"}, {"path": "y.jsonl", "eot_tokens": ["<|im_end|>"]}],
    )
    first, second = cfg.datasets
    by_default = chat_build(first, tokenizer, cfg)
    assert by_default.eot_ids == {"<|endoftext|>": PAD}
    # <|im_end|> is no end of turn now: the trained text stops at the content.
    assert trained(by_default(CHAT_ROW)) == HELLO
    # A dataset's own eot_tokens wins.
    assert chat_build(second, tokenizer, cfg).eot_ids == {"<|im_end|>": END}
    assert trained(chat_build(second, tokenizer, cfg)(CHAT_ROW)) == [*HELLO, END]


def test_top_level_default_system_message_and_chat_template_kwargs(tokenizer):
    cfg = make_config(
        default_system_message="Be kind.", chat_template_kwargs={"mood": "x"}, datasets=[{"path": "x.jsonl"}]
    )
    out = chat_build(cfg.datasets[0], tokenizer, cfg)(CHAT_ROW)
    assert out["input_ids"][:5] == [START, *SYSTEM, *text_ids(tokenizer, "Be kind.")[:2]]
    options = chat_build(cfg.datasets[0], tokenizer, cfg).options
    assert options.chat_template_kwargs == {"mood": "x"}


def test_top_level_eot_tokens_changes_the_cache_key(tmp_path, tiny_model_dir, tokenizer):
    data = write_jsonl(tmp_path / "chat.jsonl", [CHAT_ROW])

    def prepare(**keys):
        cfg, manager = load_config(write_config(tmp_path, tiny_model_dir, data, **BASE, **keys))
        return prepare_data(cfg, tokenizer, manager.collect_registrations())

    plain, other = prepare(), prepare(eot_tokens=["<|endoftext|>"])
    assert other.cache_dir != plain.cache_dir and not other.from_cache
    assert other.sources[0].trained_tokens == 2 and plain.sources[0].trained_tokens == 3


def test_bad_top_level_eot_tokens(tmp_path, tiny_model_dir, capsys):
    with pytest.raises(FtkError, match="eot_tokens: "):
        make_config(eot_tokens="<|im_end|>")
    data = write_jsonl(tmp_path / "chat.jsonl", [CHAT_ROW])
    cfg = write_config(tmp_path, tiny_model_dir, data, eot_tokens=["two tokens"], **BASE)
    assert main(["preprocess", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert (
        err.splitlines()[-1]
        == "error: eot_tokens: 'two tokens' is not one token of this tokenizer (it encodes to 2)"
    )


def test_axolotl_module_names_of_alpaca_styles(tokenizer):
    assert styled("alpaca_chat", tokenizer, ADD) == styled("alpaca:chat", tokenizer, ADD)
    assert styled("alpaca_instruct", tokenizer, ADD) == styled("alpaca", tokenizer, ADD)
    with pytest.raises(FtkError) as info:
        make_config(datasets=[{"path": "x.jsonl", "type": "alpaca_chat.load_qa"}])
    assert "in ftk write type: alpaca_chat or alpaca:chat; its load_* variants are not built in" in str(
        info.value
    )
