"""The small-vocabulary tiny model that tests which read no token id run on (``small_vocab_model_dir``).

It must stay a faithful stand-in: Qwen's tokenizer cut short (the ids it keeps are Qwen's), the
tiny model's chat template and special tokens, and a model that loads with the Auto classes.
"""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SMALL_VOCAB = 16_384  # the tokens it keeps (tests/conftest.py)

MESSAGES = [
    {"role": "system", "content": "Réponds brièvement."},
    {"role": "user", "content": "What is the capital of France? 🇫🇷"},
    {"role": "assistant", "content": "The capital of France is Paris.\n\n  Ça va?"},
]


def test_it_is_the_tiny_models_tokenizer_cut_short(small_vocab_model_dir, tiny_model_dir, tokenizer):
    small = AutoTokenizer.from_pretrained(small_vocab_model_dir)
    assert len(small) == SMALL_VOCAB + 3
    assert [small.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        SMALL_VOCAB,
        SMALL_VOCAB + 1,
        SMALL_VOCAB + 2,
    ]
    assert (small.eos_token, small.pad_token) == (tokenizer.eos_token, tokenizer.pad_token)
    assert small.chat_template == tokenizer.chat_template

    text = small.apply_chat_template(MESSAGES, tokenize=False)
    assert text == tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    ids = small(text)["input_ids"]
    assert small.decode(ids) == text
    kept = [i for i in ids if i < SMALL_VOCAB]
    assert small.convert_ids_to_tokens(kept) == tokenizer.convert_ids_to_tokens(kept)  # Qwen's ids
    assert len(tokenizer(text)["input_ids"]) < len(ids) < 2 * len(tokenizer(text)["input_ids"])


def test_its_model_loads_and_covers_the_vocabulary(small_vocab_model_dir, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(small_vocab_model_dir)
    tiny = json.loads((tiny_model_dir / "config.json").read_text())
    assert model.config.vocab_size == SMALL_VOCAB + 64  # the 3 special tokens, padded to a multiple of 64
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (
        tiny["hidden_size"],
        tiny["num_hidden_layers"],
    )
    assert (model.config.eos_token_id, model.config.pad_token_id) == (SMALL_VOCAB + 2, SMALL_VOCAB)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[SMALL_VOCAB + 1, 872, 198, SMALL_VOCAB + 2]])).logits
    assert logits.shape == (1, 4, SMALL_VOCAB + 64) and torch.isfinite(logits).all()
