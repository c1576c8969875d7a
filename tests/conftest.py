"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled tiny model, built once per session at its random initialisation (no warm-up)."""
    from ftk.plugins.tiny_model.builder import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0, warmup_steps=0)


#: Tokens of Qwen's BPE that the small-vocabulary model keeps (the 256 bytes and the first merges).
SMALL_VOCAB = 16384


@pytest.fixture(scope="session")
def small_vocab_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with Qwen's vocabulary cut to its first 16,384 tokens, for tests that read no token id.

    Same tokenizer pipeline (NFC, Qwen's split, byte-level BPE), chat template and special tokens
    (renumbered after the kept tokens: ``<|endoftext|>`` 16384, ``<|im_start|>`` 16385,
    ``<|im_end|>`` 16386), and a random Qwen3 of the tiny model's shape sized for it.  Any text
    still encodes and decodes to itself; the bundled dialogues take about 10% more tokens (the
    longest 891 instead of 822).  Its tokenizer loads in about a tenth of the time of the
    151,646-token one (some 2 s, paid by every command a test runs in-process) and its output
    layer is a ninth of the size: tests that run many commands which stop on bad input, or train
    a few steps and check what is saved, use it.
    """
    import json
    import shutil

    import torch
    from transformers import AutoTokenizer

    from ftk.plugins.tiny_model.builder import build_random_model

    out = tmp_path_factory.mktemp("small-vocab") / "model"
    out.mkdir()
    full = json.loads((tiny_model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    bpe = full["model"]
    vocab = {token: index for token, index in bpe["vocab"].items() if index < SMALL_VOCAB}
    bpe["vocab"] = vocab
    bpe["merges"] = [[a, b] for a, b in bpe["merges"] if a in vocab and b in vocab and a + b in vocab]
    for offset, added in enumerate(full["added_tokens"]):
        added["id"] = SMALL_VOCAB + offset
    (out / "tokenizer.json").write_text(json.dumps(full, ensure_ascii=False), encoding="utf-8")
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model_dir / name, out / name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        build_random_model(AutoTokenizer.from_pretrained(out)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):
    """The tiny model's tokenizer, shared: tests that change a tokenizer load their own copy."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# Control tokens added per template (ids follow the 151,646 tokens of the tiny vocabulary), and
# the bos/eos the family uses.  "<s>" and "</s>" are already in Qwen's vocabulary (as plain text).
TEMPLATE_SPECIAL_TOKENS = {
    "chatml": ([], {}),
    "llama3": (
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
    ),
    "qwen3": (
        ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"],
        {},
    ),
    "mistral": (["[INST]", "[/INST]"], {"bos_token": "<s>", "eos_token": "</s>"}),
    "gemma": (["<start_of_turn>", "<end_of_turn>"], {"bos_token": "<bos>", "eos_token": "<eos>"}),
}


@pytest.fixture(scope="session")
def tokenizers(tiny_model_dir: Path) -> dict:
    """One tiny-model tokenizer per built-in template, with that family's control tokens added."""
    from transformers import AutoTokenizer

    made = {}
    for name, (extra, named) in TEMPLATE_SPECIAL_TOKENS.items():
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        tokenizer.add_special_tokens({"additional_special_tokens": extra, **named})
        made[name] = tokenizer
    return made


@pytest.fixture(scope="session")
def sharp_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its weights scaled so that its predictions differ from token to token.

    At initialisation every next-token distribution is near uniform (each token costs about
    ln(vocab)) and greedy decoding repeats the last prompt token, so a test of how losses are
    averaged or of which prompt was used could not fail.  Scaled (embeddings x20, other matrices
    x8), examples' losses spread over a unit or so and greedy replies depend on the prompt.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("sharp") / "model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.mul_(20.0 if "embed_tokens" in name else 8.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out
