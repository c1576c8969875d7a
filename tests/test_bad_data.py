"""Bad data input: one line naming the file, the line (or row) and the field, exit code 2, nothing written.

Each case runs ``ftk train`` in-process; it must stop before the model is loaded, with no
traceback, one ``error:`` line, no ``output_dir`` and no cache entry.  The commands run on the
small-vocabulary tiny model (``small_vocab_model_dir``): no message here depends on a token id,
and its tokenizer loads in a fraction of the time.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from ftk.cli import main
from ftk.core.config.loader import load_config
from ftk.core.config.schema import DatasetConfig
from ftk.core.data.pipeline import prepare_data
from ftk.core.data.sources import load_source
from ftk.core.errors import FtkError, RowError
from ftk.prompt_strategies.chat_rows import MessageReader
from ftk.prompt_strategies.chat_template import ChatTemplateOptions
from tests.helpers import line_of, write_config

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
QUESTION_ONLY = {"messages": [{"role": "user", "content": "Anyone there?"}]}
# Data preparation only: short rows, no training keys.
BASE = dict(sequence_len=64, micro_batch_size=None, max_steps=None, seed=None)


def load(path: Path, **fields):
    return load_source(DatasetConfig(path=str(path), **fields), "datasets[0]")


def jsonl_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def chat_lines(count: int) -> list[str]:
    return [json.dumps(CHAT)] * count


def failure(capsys, tmp_path: Path, cfg: Path) -> str:
    """The one error line of ``ftk train cfg`` (exit code 2, no traceback, nothing written)."""
    capsys.readouterr()
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    assert not (tmp_path / "out").exists()
    prepared = tmp_path / "prepared"
    assert not prepared.exists() or not any(prepared.iterdir())
    # Only a progress bar may come before the error, on lines of its own.
    return err.splitlines()[-1]


def chat_config(tmp_path: Path, model: Path, data: Path, **keys) -> Path:
    return write_config(tmp_path, model, data, **{**BASE, **keys})


# --- malformed JSON lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[{"a": 1},\n {"a": 2}]\n', None),
        ('[{"a": 1},\n 3]\n', "item 2 of the JSON array: expected a JSON object, got a number"),
        ('[{"a": 1},\n {"a": 2]\n', "2: not valid JSON (Expecting ',' delimiter at column 9)"),
        ('\n[1, 2]\n{"a": 1}\n', "2: expected a JSON object, got an array"),
    ],
)
def test_a_file_that_starts_with_an_array(tmp_path, text, problem):
    data = tmp_path / "data.jsonl"
    data.write_text(text)
    if problem is None:
        assert load(data).to_list() == [{"a": 1}, {"a": 2}]
        return
    with pytest.raises(FtkError) as info:
        load(data)
    assert str(info.value) == (f"{data}:{problem}" if problem[0].isdigit() else f"{data}: {problem}")


def test_truncated_json_object_names_its_line_and_column(tmp_path, small_vocab_model_dir, capsys):
    lines = chat_lines(25)
    lines[19] = '{"a": 1'
    data = jsonl_lines(tmp_path / "data.jsonl", lines)
    line = failure(capsys, tmp_path, chat_config(tmp_path, small_vocab_model_dir, data))
    assert line == f"error: {data}:20: not valid JSON (Expecting ',' delimiter at column 8)"


def test_a_line_that_is_not_an_object_is_named(tmp_path, small_vocab_model_dir, capsys):
    lines = chat_lines(12)
    lines[9] = "42"
    data = jsonl_lines(tmp_path / "data.jsonl", lines)
    line = failure(capsys, tmp_path, chat_config(tmp_path, small_vocab_model_dir, data))
    assert line == f"error: {data}:10: expected a JSON object, got a number"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1, 2]", "expected a JSON object, got an array"),
        ('"hello"', "expected a JSON object, got a string"),
        ("true", "expected a JSON object, got true/false"),
        ('{"messages": [], "messages": []}', "key 'messages' appears twice in one object"),
        ('{"a": 1}}', "not valid JSON (Extra data at column 9)"),
        ('{"a": 1},', "not valid JSON (Extra data at column 9)"),
    ],
)
def test_the_wrong_line_and_what_is_wrong_with_it(tmp_path, text, problem):
    data = jsonl_lines(tmp_path / "data.jsonl", [*chat_lines(2), "", text, *chat_lines(2)])
    with pytest.raises(FtkError) as info:
        load(data)
    assert str(info.value) == f"{data}:4: {problem}"


def test_blank_lines_are_skipped_and_rows_are_named_by_their_line(
    tmp_path, small_vocab_model_dir, tiny_model_dir, tokenizer, capsys
):
    bad = {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}
    lines = [*chat_lines(4), "", "   ", *chat_lines(3), json.dumps(bad), *chat_lines(2), ""]
    data = jsonl_lines(tmp_path / "data.jsonl", lines)
    # datasets itself fails on blank lines once a field's type varies between rows; ftk reads them.
    line = failure(capsys, tmp_path, chat_config(tmp_path, small_vocab_model_dir, data))
    assert line == f"error: {data}:10: messages[0].content: must be text, got int"

    good = jsonl_lines(tmp_path / "good.jsonl", [*chat_lines(2), "", *chat_lines(2)])
    cfg, manager = load_config(chat_config(tmp_path, tiny_model_dir, good))
    assert prepare_data(cfg, tokenizer, manager.collect_registrations()).sources[0].rows == 4


def test_a_null_line_is_named_as_such(tmp_path, tiny_model_dir, tokenizer):
    # datasets reads a ``null`` line as a row of nulls; the error names the line for what it is.
    data = jsonl_lines(tmp_path / "data.jsonl", [json.dumps(CHAT), "null", json.dumps(CHAT)])
    cfg, manager = load_config(chat_config(tmp_path, tiny_model_dir, data))
    with pytest.raises(FtkError) as info:
        prepare_data(cfg, tokenizer, manager.collect_registrations())
    assert str(info.value) == f"{data}:2: expected a JSON object, got null"


def test_skipped_rows_are_named_by_their_line(tmp_path, small_vocab_model_dir, capsys):
    bad = {"messages": [{"role": "robot", "content": "x"}]}
    data = jsonl_lines(tmp_path / "data.jsonl", [json.dumps(CHAT), "", json.dumps(bad), json.dumps(CHAT)])
    cfg = chat_config(tmp_path, small_vocab_model_dir, data, invalid_rows="skip")
    assert main(["preprocess", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"skipped {data}:3: messages[0].role: unknown role 'robot'; map it with `roles:`" in out


# --- empty, binary and mislabelled files ------------------------------------------------------


def test_an_empty_file_says_so(tmp_path, small_vocab_model_dir, capsys):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"")
    line = failure(capsys, tmp_path, chat_config(tmp_path, small_vocab_model_dir, data))
    assert line == f"error: {data}: empty file"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("data.jsonl", b"  \n\n\t\n", "empty file (only whitespace)"),
        ("data.csv", b"", "empty file"),
        ("data.csv", b"instruction,output\n", "no rows (only a header line)"),
        (
            "data.jsonl",
            b"\x00\x01\x02\xffgarbage",
            "not a text file (byte 0 is b'\\x00'); a JSON-lines file is UTF-8 text",
        ),
        (
            "data.jsonl",
            b'{"a": "ok"}\n{"a": "caf\xe9"}\n',
            "2: not UTF-8 text (byte b'\\xe9' at column 11); save the file as UTF-8",
        ),
        (
            "data.jsonl",
            b"PAR1\x00\x00",
            "this is a Parquet file, not JSON lines; name it .parquet or set ds_type: parquet",
        ),
        ("data.jsonl", b"PK\x03\x04rest", "this is a zip archive, not JSON lines"),
        ("data.parquet", b"", "empty file"),
        ("data.parquet", b'{"a": 1}\n', "not a Parquet file (a Parquet file starts with the bytes PAR1)"),
        ("data.jsonl", "{}".encode("utf-16"), "UTF-16 text; ftk reads UTF-8: save the file as UTF-8"),
    ],
)
def test_unreadable_files_say_why(tmp_path, name, content, problem):
    data = tmp_path / name
    data.write_bytes(content)
    with pytest.raises(FtkError) as info:
        load(data)
    assert str(info.value) == (f"{data}:{problem}" if problem[0].isdigit() else f"{data}: {problem}")


def test_corrupt_parquet_names_the_file(tmp_path):
    data = tmp_path / "data.parquet"
    data.write_bytes(b"PAR1" + bytes(range(100)))
    with pytest.raises(FtkError) as info:
        load(data)
    assert str(info.value).startswith(f"{data}: cannot be read as Parquet: ArrowInvalid: ")


def test_gzipped_json_lines_under_a_jsonl_name_are_read(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(gzip.compress("".join(line + "\n" for line in chat_lines(3)).encode()))
    assert len(load(data)) == 3


@pytest.mark.parametrize("files", [{}, {"notes.md": "nothing here"}])
def test_folder_without_data_files(tmp_path, files):
    (tmp_path / "data").mkdir()
    for name, text in files.items():
        (tmp_path / "data" / name).write_text(text)
    with pytest.raises(FtkError) as info:
        load(tmp_path / "data")
    assert str(info.value) == (
        f"datasets[0].path: no data files in the folder '{tmp_path / 'data'}' "
        "(ftk reads .jsonl, .json, .parquet, .csv, .arrow)"
    )


def test_folder_with_a_bad_file_names_the_file_and_line(tmp_path):
    (tmp_path / "data").mkdir()
    jsonl_lines(tmp_path / "data" / "a.jsonl", chat_lines(2))
    bad = jsonl_lines(tmp_path / "data" / "b.jsonl", [json.dumps(CHAT), "{oops"])
    with pytest.raises(FtkError) as info:
        load(tmp_path / "data")
    assert str(info.value) == (
        f"{bad}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    )


# --- strategy functions named by a dotted path ------------------------------------------------

STRATEGIES = """
def two_args(a, b):
    return None

def row_function(row):
    return {}

not_a_function = 42

def returns_a_number(dataset, tokenizer, cfg):
    return 5

def returns_a_two_argument_function(dataset, tokenizer, cfg):
    return lambda row, extra: {}

def returns_no_input_ids(dataset, tokenizer, cfg):
    return lambda row: {"ids": [1, 2]}

def fails_to_build(dataset, tokenizer, cfg):
    raise ValueError("no good")

def fails_on_rows(dataset, tokenizer, cfg):
    return lambda row: row["text"]
"""


@pytest.fixture
def strategies(tmp_path, monkeypatch) -> str:
    """The name of a fresh module of strategy functions, importable for this test."""
    name = f"user_strategies_{abs(hash(tmp_path))}"
    (tmp_path / f"{name}.py").write_text(STRATEGIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def strategy_config(tmp_path: Path, model: Path, type_name: str) -> Path:
    data = jsonl_lines(tmp_path / "data.jsonl", chat_lines(2))
    return write_config(tmp_path, model, [{"path": data, "type": type_name}], **BASE)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (
            "two_args",
            "{name}.two_args takes (a, b) but ftk calls it as two_args(dataset, tokenizer, cfg), once, "
            "to get the function that turns a row into input_ids and labels",
        ),
        (
            "row_function",
            "{name}.row_function takes (row) but ftk calls it as row_function(dataset, tokenizer, cfg), "
            "once, to get the function that turns a row into input_ids and labels; a function of one row "
            "goes inside: write build(dataset, tokenizer, cfg) that returns it "
            "(docs/datasets.md#your-own-format-type-mypkgmodulefunction)",
        ),
        ("not_a_function", "{name}.not_a_function is int 42, not a function"),
        ("two_arg", "module '{name}' has no attribute 'two_arg' (did you mean 'two_args'?)"),
    ],
)
def test_strategy_function_checked_at_validation(
    tmp_path, small_vocab_model_dir, capsys, strategies, function, message
):
    cfg = strategy_config(tmp_path, small_vocab_model_dir, f"{strategies}.{function}")
    line = failure(capsys, tmp_path, cfg)
    expected = message.format(name=strategies)
    assert line == f"error: {cfg}:{line_of(cfg, 'type')}: datasets[0].type: {expected}"


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (
            "returns_a_two_argument_function",
            "{data}: {name}.returns_a_two_argument_function(dataset, tokenizer, cfg) returned a function "
            "that takes (row, extra); ftk calls it with one argument, the row (a dict)",
        ),
        (
            "fails_to_build",
            "{data}: {name}.fails_to_build(dataset, tokenizer, cfg) raised ValueError: no good "
            "(--verbose shows where)",
        ),
        (
            "fails_on_rows",
            "{data}:1: strategy '{name}.fails_on_rows' raised KeyError: 'text' (--verbose shows where)",
        ),
        (
            "returns_no_input_ids",
            "{data}:1: strategy '{name}.returns_no_input_ids' returned a mapping with keys 'ids'; ftk needs "
            "a mapping with input_ids and labels (lists of ints), or a list of such mappings",
        ),
    ],
)
def test_what_a_strategy_function_returns_is_checked(
    tmp_path, tiny_model_dir, tokenizer, strategies, function, message
):
    cfg, manager = load_config(strategy_config(tmp_path, tiny_model_dir, f"{strategies}.{function}"))
    with pytest.raises(FtkError) as info:
        prepare_data(cfg, tokenizer, manager.collect_registrations())
    assert str(info.value) == message.format(name=strategies, data=tmp_path / "data.jsonl")


def test_a_build_function_that_returns_no_function_stops_the_cli(
    tmp_path, small_vocab_model_dir, capsys, strategies
):
    cfg = strategy_config(tmp_path, small_vocab_model_dir, f"{strategies}.returns_a_number")
    assert failure(capsys, tmp_path, cfg) == (
        f"error: {tmp_path / 'data.jsonl'}: {strategies}.returns_a_number(dataset, tokenizer, cfg) returned "
        "int 5, not a function of one row (docs/datasets.md#your-own-format-type-mypkgmodulefunction)"
    )


@pytest.mark.parametrize(
    ("type_name", "message"),
    [
        ("chat_templat", "unknown strategy 'chat_templat' (did you mean 'chat_template'?); registered: "),
        ("alpacca", "unknown strategy 'alpacca' (did you mean 'alpaca'?); registered: "),
        (
            "sharegpt",
            "unknown strategy 'sharegpt' (axolotl's; in ftk write type: chat_template with field_messages: "
            "conversations, message_property_mappings: {role: from, content: value} and roles: "
            "{user: [human], assistant: [gpt]}: see docs/axolotl.md); registered: ",
        ),
        (
            "chat_template.default",
            "no module named 'chat_template' (strategy 'chat_template.default'); 'chat_template' is a "
            "registered strategy: write type: chat_template",
        ),
        ("no_such_package.build", "no module named 'no_such_package' (strategy 'no_such_package.build')"),
    ],
)
def test_unknown_type_names_the_type_and_the_fix(tmp_path, small_vocab_model_dir, capsys, type_name, message):
    cfg = strategy_config(tmp_path, small_vocab_model_dir, type_name)
    line = failure(capsys, tmp_path, cfg)
    assert line.startswith(f"error: {cfg}:{line_of(cfg, 'type')}: datasets[0].type: {message}")


# --- null fields, missing columns, nothing to train -------------------------------------------


def test_a_null_assistant_content_names_line_and_field(tmp_path, small_vocab_model_dir, capsys):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]}
    data = jsonl_lines(tmp_path / "data.jsonl", [json.dumps(CHAT), json.dumps(row)])
    line = failure(capsys, tmp_path, chat_config(tmp_path, small_vocab_model_dir, data))
    assert line == (
        f"error: {data}:2: messages[1].content: missing or null (every message needs text; an assistant "
        "message may have tool_calls instead)"
    )


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (
            {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]},
            "messages[0].content: missing or null (every message needs text; an assistant message may "
            "have tool_calls instead)",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": None, "content": "x"}]},
            "messages[1].role: missing or null",
        ),
        ({"messages": "Hi there"}, "messages: must be a non-empty list of messages, got str"),
        ({"messages": []}, "messages: must be a non-empty list of messages, got an empty list"),
        (
            {"conversations": [{"from": "human", "value": "Hi"}]},
            "messages: missing: no such column (columns: conversations); set field_messages",
        ),
        (
            {"messages": [{"from": "human", "value": "Hi"}]},
            "messages[0].role: missing: the messages have no such key (keys: from, value); "
            "set message_property_mappings: {role: <key>, content: <key>}",
        ),
    ],
)
def test_bad_chat_rows_name_the_field(row, problem):
    with pytest.raises(RowError) as info:
        MessageReader(ChatTemplateOptions())(row)
    assert str(info.value) == problem


def test_assistant_tool_call_without_content_is_kept(tmp_path, tiny_model_dir, tokenizer):
    call = {"type": "function", "function": {"name": "now", "arguments": {}}}
    messages = [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "noon"},
        {"role": "assistant", "content": "Noon."},
    ]
    data = jsonl_lines(tmp_path / "data.jsonl", [json.dumps({"messages": messages})])
    cfg, manager = load_config(
        chat_config(tmp_path, tiny_model_dir, data, chat_template="qwen3", sequence_len=512)
    )
    assert prepare_data(cfg, tokenizer, manager.collect_registrations()).sources[0].kept == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_alpaca_null_output_and_missing_column(tmp_path, tiny_model_dir, tokenizer, suffix):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": None}]
    data = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        pd.DataFrame([{"instruction": "a", "response": "b"}]).to_csv(data, index=False)
        expected = f"{data}: row 1: output: missing: no such column (columns: instruction, response); set field_output"
    else:
        jsonl_lines(data, [json.dumps(row) for row in rows])
        expected = f"{data}:2: output: missing or null"
    cfg, manager = load_config(
        write_config(tmp_path, tiny_model_dir, [{"path": data, "type": "alpaca"}], **BASE)
    )
    with pytest.raises(FtkError) as info:
        prepare_data(cfg, tokenizer, manager.collect_registrations())
    assert str(info.value) == expected


def test_a_dataset_with_nothing_to_train_stops_the_run(tmp_path, small_vocab_model_dir, capsys):
    good = jsonl_lines(tmp_path / "good.jsonl", chat_lines(3))
    questions = jsonl_lines(tmp_path / "questions.jsonl", [json.dumps(QUESTION_ONLY)] * 2)
    entries = [{"path": good, "type": "chat_template"}, {"path": questions, "type": "chat_template"}]
    cfg = write_config(tmp_path, small_vocab_model_dir, entries, **BASE)
    assert failure(capsys, tmp_path, cfg) == (
        f"error: datasets[1] ({questions}): no rows left to train on, of 2: 2 with nothing to train (no "
        "token of them is trained: a conversation without an assistant turn, or roles_to_train or "
        f"message_field_training leaving every message out; {questions}:1, {questions}:2)"
    )


def test_rows_with_nothing_to_train_are_counted_and_named(tmp_path, small_vocab_model_dir, capsys):
    rows = [json.dumps(CHAT), json.dumps(QUESTION_ONLY), "", json.dumps(CHAT), json.dumps(QUESTION_ONLY)]
    data = jsonl_lines(tmp_path / "data.jsonl", rows)
    cfg = chat_config(tmp_path, small_vocab_model_dir, data)
    assert main(["preprocess", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"; dropped 2 rows: 2 with nothing to train ({data}:2, {data}:5)" in out
    assert main(["preprocess", str(cfg), "--json"]) == 0
    (source,) = json.loads(capsys.readouterr().out)["datasets"]
    assert (source["kept"], source["nothing_trained_examples"]) == (2, [f"{data}:2", f"{data}:5"])


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        (
            "    roles_to_train: [asistant]\n",
            "unknown role 'asistant' (did you mean 'assistant'?); roles are system, user, assistant, tool",
        ),
        (
            "    roles: {assistant: [gpt]}\n    roles_to_train: [gpt]\n",
            "'gpt' is a name in the data; roles_to_train takes the role it maps to, 'assistant'",
        ),
    ],
)
def test_roles_to_train_must_name_roles(tmp_path, small_vocab_model_dir, capsys, setting, problem):
    data = jsonl_lines(tmp_path / "data.jsonl", chat_lines(2))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"base_model: {small_vocab_model_dir}\ndatasets:\n  - path: {data}\n{setting}")
    line = failure(capsys, tmp_path, cfg)
    assert line == f"error: {cfg}:{line_of(cfg, 'roles_to_train')}: datasets[0].roles_to_train: {problem}"
