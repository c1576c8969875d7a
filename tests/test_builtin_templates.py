"""Every chat template name axolotl accepts is built in, renders what the family's template renders,
and trains exactly each reply and its end-of-turn token.

tests/data/template_renderings.json holds the renderings of the reference templates (axolotl's
copies of each family's template) of five fixed conversations, written by
``bench/template_parity.py --write-renderings``, with each family's bos, eos and control tokens.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from ftk.core.config.schema import DatasetConfig, FtkConfig
from ftk.core.errors import RowError
from ftk.integrations.chat_template_spans import render_tracked
from ftk.prompt_strategies.chat_template import ChatTemplateOptions, ChatTemplateTokenizer
from ftk.prompt_strategies.template_table import DIFFERENCES
from ftk.prompt_strategies.templates import (
    BUILTIN_TEMPLATES,
    resolve_chat_template,
    template_name_problem,
)

DATA = json.loads((Path(__file__).parent / "data" / "template_renderings.json").read_text(encoding="utf-8"))
CONVERSATIONS = DATA["conversations"]
TEMPLATES = DATA["templates"]
TRAINING = [key for key, case in CONVERSATIONS.items() if not case["add_generation_prompt"]]

# The files of axolotl's src/axolotl/utils/chat_templates/templates/ (its ChatTemplate choices
# but jinja and tokenizer_default, plus phi_4).
AXOLOTL_NAMES = {
    "alpaca", "aya", "chatml", "cohere", "command_a", "command_a_rag", "command_a_tool_use",
    "deepseek_v2", "deepseek_v3", "exaone", "exaone4", "falcon_h1", "gemma", "gemma3", "gemma3n",
    "gemma4", "gemma4_unified", "jamba", "llama3", "llama3_2_vision", "llama4", "llava", "metharme",
    "mistral_v1", "mistral_v2v3", "mistral_v3_tekken", "mistral_v7_tekken", "nemotron_h", "phi_3",
    "phi_35", "phi_4", "pixtral", "qwen2_vl", "qwen3", "qwen3_5", "qwen_25",
}  # fmt: skip

# Where ftk's built-in differs from the reference on purpose (DIFFERENCES says why): the exact text.
ON_PURPOSE = {
    ("gemma", "system_one_turn"): (
        "<bos><start_of_turn>user\nYou are kind.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello there<end_of_turn>\n"
    ),
    ("gemma", "padded_system_two_turns"): (
        "<bos><start_of_turn>user\nBe brief.\n\nName a colour.<end_of_turn>\n<start_of_turn>model\nBlue.<end_of_turn>\n"
        "<start_of_turn>user\nAnother?<end_of_turn>\n<start_of_turn>model\nGreen.<end_of_turn>\n"
    ),
    ("gemma", "prompt_with_system"): (
        "<bos><start_of_turn>user\nYou are kind.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    ),
    ("mistral_v2v3", "system_one_turn"): "<s>[INST] You are kind.\n\nHi[/INST] Hello there</s>",
    ("mistral_v2v3", "padded_system_two_turns"): (
        "<s>[INST]  Name a colour. [/INST] Blue.</s>[INST]   Be brief.\n\n\nAnother?[/INST] Green.</s>"
    ),
    ("mistral_v3_tekken", "system_one_turn"): "<s>[INST]You are kind.\n\nHi[/INST]Hello there</s>",
    ("mistral_v3_tekken", "padded_system_two_turns"): (
        "<s>[INST] Name a colour. [/INST]\nBlue. </s>[INST]  Be brief.\n\n\nAnother?[/INST]Green.</s>"
    ),
    ("pixtral", "system_one_turn"): "<s>[INST]You are kind.\n\nHi[/INST]Hello there</s>",
    ("pixtral", "padded_system_two_turns"): (
        "<s>[INST] Name a colour. [/INST]\nBlue. </s>[INST]  Be brief.\n\n\nAnother?[/INST]Green.</s>"
    ),
    ("qwen3", "prompt_with_system"): (
        "<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ),
    ("qwen3", "prompt_second_turn"): (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n<|im_start|>user\n"
        "And 3+3?<|im_end|>\n<|im_start|>assistant\n"
    ),
}

# What is trained of each reply: "{}" is the reply as the template writes it (trimmed by the
# templates in TRIMMED), then the end-of-turn token; (earlier replies, the last reply).
_IM_END = ("{}<|im_end|>", "{}<|im_end|>")
_COMMAND_A = ("{}<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",) * 2
_COHERE = ("{}<|END_OF_TURN_TOKEN|>",) * 2
_GEMMA = ("{}<end_of_turn>",) * 2
_EOS = ("{}</s>",) * 2
TRAINED = {
    "alpaca": _EOS,
    "aya": _COHERE,
    "chatml": _IM_END,
    "cohere": _COHERE,
    "command_a": _COMMAND_A,
    "command_a_rag": _COMMAND_A,
    "command_a_tool_use": _COMMAND_A,
    "deepseek_v2": ("{}<｜end▁of▁sentence｜>",) * 2,
    "deepseek_v3": ("{}<｜end▁of▁sentence｜>",) * 2,
    "exaone": ("{}[|endofturn|]",) * 2,
    "exaone4": ("{}[|endofturn|]",) * 2,  # after the empty think block of its generation prompt
    "falcon_h1": _IM_END,
    "gemma": _GEMMA,
    "gemma3": _GEMMA,
    "gemma3n": _GEMMA,
    "gemma4": ("{}<turn|>",) * 2,
    "gemma4_unified": ("{}<turn|>",) * 2,
    "jamba": (" {}<|eom|>",) * 2,  # the prompt ends at the role; the space is the model's
    "llama3": ("{}<|eot_id|>",) * 2,
    "llama3_2_vision": ("{}<|eot_id|>",) * 2,
    "llama4": ("{}<|eot|>",) * 2,
    "llava": (" {}",) * 2,  # no end-of-turn token in LLaVA's format
    "metharme": ("{}", "{}</s>"),  # <|user|> is text; eos only ends the conversation
    "mistral": _EOS,
    "mistral_v1": _EOS,
    "mistral_v2v3": _EOS,
    "mistral_v3_tekken": _EOS,
    "mistral_v7_tekken": _EOS,
    "nemotron_h": _IM_END,
    "phi_3": ("{}<|end|>",) * 2,
    "phi_35": ("{}<|end|>",) * 2,
    "phi_4": _IM_END,
    "pixtral": _EOS,
    "qwen2_vl": _IM_END,
    # The last reply gets a think block, which the model writes (qwen3_5's prompt opens it).
    "qwen3": ("{}<|im_end|>", "<think>\n\n</think>\n\n{}<|im_end|>"),
    "qwen3_5": ("{}<|im_end|>", "</think>\n\n{}<|im_end|>"),
    "qwen_25": _IM_END,
}
TRIMMED = {"aya", "cohere", "gemma", "gemma3", "gemma3n", "gemma4", "gemma4_unified", "llama3", "metharme"}
TRIMMED |= {"mistral_v2v3"}

X = -100


def test_every_axolotl_name_is_built_in():
    assert set(TEMPLATES) == AXOLOTL_NAMES
    assert AXOLOTL_NAMES <= set(BUILTIN_TEMPLATES)
    assert set(BUILTIN_TEMPLATES) - AXOLOTL_NAMES == {"mistral"}
    for name in [*AXOLOTL_NAMES, "tokenizer_default", "jinja", "tokenizer_default_fallback_llama3"]:
        assert template_name_problem(name) is None, name
    assert set(TRAINED) == set(BUILTIN_TEMPLATES)


def test_a_fallback_to_an_unknown_template_is_named():
    problem = template_name_problem("tokenizer_default_fallback_gemma9")
    assert problem is not None
    assert problem.startswith("unknown fallback template 'gemma9' in 'tokenizer_default_fallback_gemma9'")
    assert "did you mean" in problem


def _render(name: str, case: dict, **tokens: str) -> str:
    """ftk's built-in ``name`` rendering the case, as the chat_template strategy renders (spans tracked)."""
    date = DATA["date"].replace("-", "")
    rendered, _ = render_tracked(
        BUILTIN_TEMPLATES[name],
        case["messages"],
        add_generation_prompt=case["add_generation_prompt"],
        strftime_now=lambda fmt: __import__("datetime").datetime.strptime(date, "%Y%m%d").strftime(fmt),
        **tokens,
    )
    return rendered


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_renderings_match_the_reference(name):
    family = TEMPLATES[name]
    tokens = {"eos_token": family["eos_token"]}
    if family["bos_token"] is not None:
        tokens["bos_token"] = family["bos_token"]
    for key, case in CONVERSATIONS.items():
        expected = ON_PURPOSE.get((name, key), family["renderings"][key])
        if expected.startswith("error: "):
            with pytest.raises(Exception, match="alternate|not supported"):
                _render(name, case, **tokens)
        else:
            assert _render(name, case, **tokens) == expected, key
    # Every rendering ftk changes on purpose is listed there, and nothing else.
    assert {n for n, _ in ON_PURPOSE} <= set(DIFFERENCES)


@cache
def family_tokenizer(model_dir: Path, name: str):
    """The small-vocabulary tokenizer with the family's bos, eos and control tokens as special tokens."""
    from transformers import AutoTokenizer

    family = TEMPLATES.get(name) or TEMPLATES["mistral_v3_tekken"]  # ftk's mistral: the same tokens
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    special = {"additional_special_tokens": family["control_tokens"], "eos_token": family["eos_token"]}
    if family["bos_token"] is not None:
        special["bos_token"] = family["bos_token"]
    tokenizer.add_special_tokens(special)
    return tokenizer


def _chat(tokenizer, name: str) -> ChatTemplateTokenizer:
    cfg = FtkConfig(base_model="m", datasets=[DatasetConfig(path="d")])
    return ChatTemplateTokenizer(ChatTemplateOptions(chat_template=name), tokenizer, cfg)


def _trained_runs(out: dict) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = X
    for label in out["labels"]:
        if label != X:
            if previous == X:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_masking_trains_each_reply_and_its_end_of_turn(small_vocab_model_dir, name):
    tokenizer = family_tokenizer(small_vocab_model_dir, name)
    chat = _chat(tokenizer, name)
    earlier, last = TRAINED[name]
    for key in TRAINING:
        messages = CONVERSATIONS[key]["messages"]
        out = chat({"messages": messages})
        # The ids are the template's text, as ftk renders it with this tokenizer.
        rendered, _ = render_tracked(BUILTIN_TEMPLATES[name], messages, **tokenizer.special_tokens_map)
        assert tokenizer.decode(out["input_ids"]) == rendered, key
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        shown = [reply.strip() if name in TRIMMED else reply for reply in replies]
        expected = [earlier.format(reply) for reply in shown[:-1]] + [last.format(shown[-1])]
        assert [tokenizer.decode(run) for run in _trained_runs(out)] == expected, key


def test_command_a_trains_the_end_of_turn_after_the_response_marker(small_vocab_model_dir):
    tokenizer = family_tokenizer(small_vocab_model_dir, "command_a")
    chat = _chat(tokenizer, "command_a")
    # <|END_RESPONSE|> comes first after a reply, but the turn ends at <|END_OF_TURN_TOKEN|>.
    assert list(chat.eot_ids) == ["<|END_OF_TURN_TOKEN|>"]
    assert chat.generation_prompt == "<|START_RESPONSE|>"


@pytest.mark.parametrize("name", ["gemma3", "llama4", "command_a", "mistral_v7_tekken", "phi_35"])
def test_text_only_templates_name_themselves_when_given_tool_calls(small_vocab_model_dir, name):
    chat = _chat(family_tokenizer(small_vocab_model_dir, name), name)
    call = {"type": "function", "function": {"name": "f", "arguments": {}}}
    row = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "1"},
            {"role": "assistant", "content": "One."},
        ]
    }
    with pytest.raises(
        RowError, match=f"chat_template {name} \\(built into ftk\\) renders text conversations only"
    ):
        chat(row)


def test_tokenizer_default_fallback_uses_the_tokenizer_template_when_there_is_one(small_vocab_model_dir):
    tokenizer = family_tokenizer(small_vocab_model_dir, "chatml")
    own = tokenizer.chat_template
    assert own and resolve_chat_template("tokenizer_default_fallback_llama3", None, tokenizer) == own
    bare = family_tokenizer(small_vocab_model_dir, "llama3")
    bare.chat_template = None
    assert (
        resolve_chat_template("tokenizer_default_fallback_llama3", None, bare) == BUILTIN_TEMPLATES["llama3"]
    )


def test_only_the_templates_that_write_reasoning_get_it_split_off(small_vocab_model_dir):
    # ftk hands a reply's <think> block to the template as reasoning only when the template reads
    # reasoning; a template that does not (Gemma 4, Phi-4's system message mentions "thinking")
    # must keep it in the content, or it would be lost.
    tokenizer = family_tokenizer(small_vocab_model_dir, "chatml")
    reading = {name for name in BUILTIN_TEMPLATES if _chat(tokenizer, name).renders_reasoning}
    assert reading == {"exaone4", "qwen3", "qwen3_5"}


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_a_tokenizer_without_bos_token_renders_no_bos(name):
    # Many tokenizers (Qwen's, the tiny model's) have no bos token: the templates write nothing there.
    for key in TRAINING:
        rendered, _ = render_tracked(
            BUILTIN_TEMPLATES[name], CONVERSATIONS[key]["messages"], eos_token="</s>"
        )
        assert rendered and "None" not in rendered, key
