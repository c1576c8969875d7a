"""input_output: segments tokenized one by one, exactly the labelled ones trained, bad segments named."""

from __future__ import annotations

import json
import textwrap

import pytest

from ftk.core.config.loader import load_config
from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.data.pipeline import prepare_data
from ftk.core.errors import FtkError, RowError
from ftk.prompt_strategies.input_output import InputOutputOptions, build

X = -100
EOS, START = 151645, 151644
USER = [1474, 25, 220]  # "User: "
HI_NL = [13048, 198]  # "Hi\n"
ANSWER = [16141, 25, 220]  # "Answer: "
HELLO_END = [9707, 1052, 27, 91, 318, 6213, 91, 29]  # "Hello there<|im_end|>", the marker as plain text
BYE = [89325]  # " Bye"

SEGMENTS = [
    {"text": "User: ", "label": False},
    {"text": "Hi\n", "label": False},
    {"text": "Answer: ", "label": False},
    {"text": "Hello there<|im_end|>", "label": True},
    {"text": " Bye", "label": False},
]


def encode(tokenizer, row, train_on_inputs=False, **options):
    dataset = DatasetConfig(path="d", type="input_output")
    dataset._options = InputOutputOptions(**options)
    cfg = FtkConfig(base_model="m", datasets=[dataset], train_on_inputs=train_on_inputs)
    return build(dataset, tokenizer, cfg)(row)


def test_mixed_labels_train_exactly_the_labelled_segments(tokenizer):
    out = encode(tokenizer, {"segments": SEGMENTS})
    assert out["input_ids"] == [*USER, *HI_NL, *ANSWER, *HELLO_END, *BYE]
    assert out["labels"] == [X, X, X, X, X, X, X, X, *HELLO_END, X]
    assert out["attention_mask"] == [1] * len(out["input_ids"])
    # No eos, no control token: the special-token string is text.
    assert EOS not in out["input_ids"]


def test_each_segment_is_tokenized_on_its_own(tokenizer):
    out = encode(tokenizer, {"segments": SEGMENTS[:2]})
    assert out["input_ids"] == [*USER, *HI_NL]
    # Tokenized together, " Hi" would have merged into one token across the boundary.
    assert tokenizer("User: Hi\n", add_special_tokens=False)["input_ids"] == [1474, 25, 21018, 198]


def test_labels_decide_even_with_train_on_inputs(tokenizer):
    assert encode(tokenizer, {"segments": SEGMENTS}, train_on_inputs=True) == encode(
        tokenizer, {"segments": SEGMENTS}
    )


def test_several_trained_segments_and_an_empty_one(tokenizer):
    segments = [
        {"text": "User: ", "label": True},
        {"text": "", "label": True},
        {"text": "Hi\n", "label": False},
        {"text": " Bye", "label": True},
    ]
    out = encode(tokenizer, {"turns": segments}, field_segments="turns")
    assert out["input_ids"] == [*USER, *HI_NL, *BYE]
    assert out["labels"] == [*USER, X, X, *BYE]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "x"}, "segments: missing: no such column (columns: text); set field_segments"),
        ({"segments": "x"}, "segments: must be a non-empty list of {text, label} segments"),
        ({"segments": []}, "segments: must be a non-empty list of {text, label} segments"),
        ({"segments": ["x"]}, "segments[0]: must be a mapping with 'text' and 'label'"),
        ({"segments": [{"label": True}]}, "segments[0].text: missing"),
        ({"segments": [SEGMENTS[0], {"text": 5, "label": True}]}, "segments[1].text: must be text, got int"),
        (
            {"segments": [{"text": "x"}]},
            "segments[0].label: missing (true to train the segment, false not to)",
        ),
        (
            {"segments": [{"text": "x", "label": "yes"}]},
            "segments[0].label: must be true or false, got 'yes'",
        ),
        ({"segments": [{"text": "x", "label": 1}]}, "segments[0].label: must be true or false, got 1"),
    ],
)
def test_bad_rows_name_the_field(tokenizer, row, message):
    with pytest.raises(RowError) as info:
        encode(tokenizer, row)
    assert str(info.value) == message


def test_config_options_and_prepared_data(tmp_path, tiny_model_dir, tokenizer):
    data = tmp_path / "segments.jsonl"
    data.write_text(json.dumps({"parts": SEGMENTS}) + "\n")
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"base_model: {tiny_model_dir}\n"
        f"datasets:\n  - path: {data}\n    type: input_output\n    field_segments: parts\n"
        f"sequence_len: 64\ndataset_prepared_path: {tmp_path / 'prepared'}\n"
    )
    cfg, manager = load_config(path)
    assert isinstance(cfg.datasets[0].options, InputOutputOptions)
    assert cfg.datasets[0].options.field_segments == "parts"

    prepared = prepare_data(cfg, tokenizer, manager.collect_registrations())
    assert prepared.train["input_ids"] == [[*USER, *HI_NL, *ANSWER, *HELLO_END, *BYE]]
    assert prepared.train["labels"] == [[X] * 8 + HELLO_END + [X]]
    assert prepared.sources[0].trained_tokens == len(HELLO_END)


def test_bad_segment_in_a_file_names_file_row_and_segment(tmp_path, tiny_model_dir, tokenizer):
    data = tmp_path / "segments.jsonl"
    rows = [{"segments": SEGMENTS}, {"segments": [{"text": "x", "label": "no"}]}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"base_model: {tiny_model_dir}\ndatasets:\n  - path: {data}\n    type: input_output\n"
        f"dataset_prepared_path: {tmp_path / 'prepared'}\n"
    )
    cfg, manager = load_config(path)
    with pytest.raises(FtkError) as info:
        prepare_data(cfg, tokenizer, manager.collect_registrations())
    assert str(info.value) == f"{data}:2: segments[0].label: must be true or false, got 'no'"


def test_config_typo_suggests_the_option(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            base_model: m
            datasets:
              - path: a.jsonl
                type: input_output
                field_segment: parts
            """
        )
    )
    with pytest.raises(FtkError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [
        f"{path}:5: datasets[0].field_segment: unknown key (did you mean 'field_segments'?)"
    ]
