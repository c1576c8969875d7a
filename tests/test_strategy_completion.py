"""completion: every token trained, eos at the end, long documents split or truncated, bad rows."""

from __future__ import annotations

import json
import textwrap

import pytest
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from ftk.core.config.loader import load_config
from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.data.pipeline import prepare_data
from ftk.core.errors import FtkError
from ftk.prompt_strategies.chat_template import RowError
from ftk.prompt_strategies.completion import CompletionOptions, build

EOS, PAD = 151645, 151643
TEXT = "one two three four five six seven eight nine ten"
# One id per word.
WORDS = [603, 1378, 2326, 3040, 4236, 4743, 8094, 8063, 11627, 5779]
DOCUMENT = [*WORDS, EOS]


def encode(tokenizer, row, sequence_len=2048, **options):
    dataset = DatasetConfig(path="d", type="completion")
    dataset._options = CompletionOptions(**options)
    cfg = FtkConfig(base_model="m", datasets=[dataset], sequence_len=sequence_len)
    return build(dataset, tokenizer, cfg)(row)


def ids_of(examples):
    return [example["input_ids"] for example in examples]


def test_short_document_is_one_fully_trained_example_ending_in_eos(tokenizer):
    (example,) = encode(tokenizer, {"text": TEXT})
    assert example["input_ids"] == DOCUMENT
    assert example["labels"] == DOCUMENT
    assert example["attention_mask"] == [1] * len(DOCUMENT)


def test_exactly_sequence_len_tokens_stay_one_chunk(tokenizer):
    assert ids_of(encode(tokenizer, {"text": TEXT}, sequence_len=11)) == [DOCUMENT]


def test_split_puts_every_token_in_exactly_one_chunk(tokenizer):
    examples = encode(tokenizer, {"text": TEXT}, sequence_len=4)
    assert ids_of(examples) == [WORDS[0:4], WORDS[4:8], [*WORDS[8:10], EOS]]
    assert [example["labels"] for example in examples] == ids_of(examples)
    assert [len(example["attention_mask"]) for example in examples] == [4, 4, 3]
    assert [token for chunk in ids_of(examples) for token in chunk] == DOCUMENT


def test_split_can_leave_the_eos_alone_in_the_last_chunk(tokenizer):
    # 10 words + eos at sequence_len 5: the eos still ends the last chunk, on its own.
    assert ids_of(encode(tokenizer, {"text": TEXT}, sequence_len=5)) == [WORDS[0:5], WORDS[5:10], [EOS]]


def test_split_without_eos(tokenizer):
    examples = encode(tokenizer, {"text": TEXT}, sequence_len=5, add_eos=False)
    assert ids_of(examples) == [WORDS[0:5], WORDS[5:10]]


def test_truncate_keeps_the_start_and_drops_the_eos_with_the_tail(tokenizer):
    (example,) = encode(tokenizer, {"text": TEXT}, sequence_len=4, long_documents="truncate")
    assert example["input_ids"] == WORDS[0:4]
    assert example["labels"] == WORDS[0:4]
    (whole,) = encode(tokenizer, {"text": TEXT}, sequence_len=11, long_documents="truncate")
    assert whole["input_ids"] == DOCUMENT


def test_custom_field_and_control_strings_stay_text(tokenizer):
    (example,) = encode(tokenizer, {"body": "one<|endoftext|>"}, field="body")
    assert example["input_ids"] == [603, 27, 91, 8691, 723, 427, 91, 29, EOS]
    assert PAD not in example["input_ids"]


def test_a_tokenizer_that_adds_bos_starts_the_document_with_it(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", PAD)]
    )
    examples = encode(tokenizer, {"text": TEXT}, sequence_len=6)
    assert ids_of(examples) == [[PAD, *WORDS[0:5]], [*WORDS[5:10], EOS]]


@pytest.mark.parametrize(
    ("row", "options", "message"),
    [
        ({"content": "x"}, {}, "text: missing: no such column (columns: content); set field"),
        ({"text": None}, {}, "text: missing or null"),
        ({"text": ""}, {}, "text: empty text"),
        ({"text": 7}, {}, "text: must be text, got int"),
        ({"text": "x"}, {"field": "body"}, "body: missing: no such column (columns: text); set field"),
    ],
)
def test_bad_rows_name_the_field(tokenizer, row, options, message):
    with pytest.raises(RowError) as info:
        encode(tokenizer, row, **options)
    assert str(info.value) == message


def test_config_options_and_prepared_chunks(tmp_path, tiny_model_dir, tokenizer):
    data = tmp_path / "corpus.jsonl"
    data.write_text(json.dumps({"body": TEXT}) + "\n" + json.dumps({"body": "one two"}) + "\n")
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"base_model: {tiny_model_dir}\n"
        f"datasets:\n  - path: {data}\n    type: completion\n    field: body\n    long_documents: split\n"
        f"sequence_len: 4\ndataset_prepared_path: {tmp_path / 'prepared'}\n"
    )
    cfg, manager = load_config(path)
    options = cfg.datasets[0].options
    assert isinstance(options, CompletionOptions)
    assert (options.field, options.add_eos, options.long_documents) == ("body", True, "split")

    prepared = prepare_data(cfg, tokenizer, manager.collect_registrations())
    # Three chunks from the first row, one example from the second, shuffled together.
    expected = [WORDS[0:4], WORDS[4:8], [*WORDS[8:10], EOS], [603, 1378, EOS]]
    assert sorted(prepared.train["input_ids"]) == sorted(expected)
    assert sorted(prepared.train["labels"]) == sorted(expected)
    (stats,) = prepared.sources
    assert (stats.rows, stats.kept, stats.too_long, stats.tokens) == (2, 4, 0, 14)


def test_config_typo_suggests_the_option(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            base_model: m
            datasets:
              - path: a.jsonl
                type: completion
                add_eso: false
                long_documents: chunk
            """
        )
    )
    with pytest.raises(FtkError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [
        f"{path}:5: datasets[0].add_eso: unknown key (did you mean 'add_eos'?)",
        f"{path}:6: datasets[0].long_documents: Input should be 'split' or 'truncate' (got 'chunk')",
    ]
