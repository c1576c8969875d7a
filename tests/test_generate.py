"""``ftk generate``: the reply equals transformers' own generate on the same templated prompt, for the
base model, the trained adapter in output_dir, or a model directory; raw prompts, stdin, limits."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from ftk.cli import main
from ftk.commands.generate import (
    GenerateOptions,
    chat_formatter,
    generate,
    read_prompt,
    stop_token_ids,
)
from ftk.core.config.loader import load_config
from tests.helpers import write_config

REPO = Path(__file__).resolve().parents[1]
CHAT = REPO / "examples" / "data" / "sgd_chat_600.jsonl"
PROMPT = "Find me a cheap restaurant in Berkeley"
IM_END, ENDOFTEXT = 151645, 151643


@pytest.fixture(scope="module")
def sharp_model(sharp_model_dir):
    return AutoModelForCausalLM.from_pretrained(sharp_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer_of(sharp_model_dir):
    return AutoTokenizer.from_pretrained(sharp_model_dir)


# Generation reads the model, the chat template and output_dir: the training keys are left out.
BASE = dict(sequence_len=None, micro_batch_size=None, max_steps=None, seed=None, dataset_prepared_path=None)


@pytest.fixture
def config(tmp_path, sharp_model_dir) -> Path:
    return write_config(tmp_path, sharp_model_dir, CHAT, **BASE)


def templated(tokenizer, prompt: str, system: str | None = None, template: str | None = None) -> list[int]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def reference(model, ids: list[int], max_new_tokens: int, **sampling) -> list[int]:
    """transformers' generate on ``ids``: the new tokens (greedy unless sampling settings are given)."""
    input_ids = torch.tensor([ids])
    output = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=bool(sampling),
        pad_token_id=ENDOFTEXT,
        **sampling,
    )
    return output[0, len(ids) :].tolist()


def run_cli(capsys, *args: str) -> str:
    assert main(["generate", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("system", [None, "You answer in one line."])
def test_greedy_reply_equals_transformers_generate(capsys, config, sharp_model, tokenizer_of, system):
    expected = reference(sharp_model, templated(tokenizer_of, PROMPT, system), 12)
    assert len(expected) == 12 and not {IM_END, ENDOFTEXT} & set(expected)  # no early stop
    if system is not None:  # the system message changes the reply
        assert expected != reference(sharp_model, templated(tokenizer_of, PROMPT), 12)

    args = ["--system", system] if system is not None else []
    out = run_cli(capsys, str(config), PROMPT, "--base", "--max-new-tokens", "12", *args)

    assert out == tokenizer_of.decode(expected, skip_special_tokens=True) + "\n"
    assert out.strip()


def test_max_new_tokens_caps_the_reply(capsys, config, sharp_model, tokenizer_of):
    expected = reference(sharp_model, templated(tokenizer_of, PROMPT), 12)
    out = run_cli(capsys, str(config), PROMPT, "--base", "--max-new-tokens", "5")
    assert out == tokenizer_of.decode(expected[:5], skip_special_tokens=True) + "\n"
    assert out != tokenizer_of.decode(expected[:6], skip_special_tokens=True) + "\n"


def test_raw_prompt_is_a_plain_completion(capsys, config, sharp_model, tokenizer_of):
    text = "The restaurant opens at"
    expected = reference(sharp_model, tokenizer_of(text)["input_ids"], 8)
    assert expected != reference(sharp_model, templated(tokenizer_of, text), 8)
    out = run_cli(capsys, str(config), text, "--base", "--raw", "--max-new-tokens", "8")
    assert out == tokenizer_of.decode(expected, skip_special_tokens=True) + "\n"


def test_default_model_is_the_adapter_in_output_dir(capsys, config, sharp_model_dir, tokenizer_of):
    base = AutoModelForCausalLM.from_pretrained(sharp_model_dir, dtype=torch.float32)
    adapted = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:  # zero at initialisation: the adapter would change nothing
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    out_dir = config.parent / "out"
    adapted.save_pretrained(out_dir)
    tokenizer_of.save_pretrained(out_dir)
    ids = templated(tokenizer_of, PROMPT)
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(sharp_model_dir, dtype=torch.float32), out_dir
    ).eval()
    expected = reference(reloaded, ids, 10)
    with reloaded.disable_adapter():
        base_reply = reference(reloaded, ids, 10)
    assert expected != base_reply

    assert run_cli(capsys, str(config), PROMPT, "--max-new-tokens", "10") == (
        tokenizer_of.decode(expected, skip_special_tokens=True) + "\n"
    )
    assert run_cli(capsys, str(config), PROMPT, "--adapter", str(out_dir), "--max-new-tokens", "10") == (
        tokenizer_of.decode(expected, skip_special_tokens=True) + "\n"
    )


def test_model_directory(capsys, tmp_path, tiny_model_dir, sharp_model_dir, sharp_model, tokenizer_of):
    config = write_config(tmp_path, tiny_model_dir, CHAT, **BASE)  # its base model is not the one run
    expected = reference(sharp_model, templated(tokenizer_of, PROMPT), 8)
    out = run_cli(capsys, str(config), PROMPT, "--model", str(sharp_model_dir), "--max-new-tokens", "8")
    assert out == tokenizer_of.decode(expected, skip_special_tokens=True) + "\n"


def test_config_chat_template_is_used(capsys, tmp_path, sharp_model_dir, sharp_model, tokenizer_of):
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant:{% endif %}"
    )
    config = write_config(
        tmp_path, sharp_model_dir, CHAT, chat_template="jinja", chat_template_jinja=template, **BASE
    )
    ids = templated(tokenizer_of, PROMPT, template=template)
    expected = reference(sharp_model, ids, 8)
    assert expected != reference(sharp_model, templated(tokenizer_of, PROMPT), 8)
    out = run_cli(capsys, str(config), PROMPT, "--base", "--max-new-tokens", "8")
    assert out == tokenizer_of.decode(expected, skip_special_tokens=True) + "\n"


def test_sampling_is_seeded(capsys, config, sharp_model, tokenizer_of):
    ids = templated(tokenizer_of, PROMPT)
    set_seed(3)
    expected = reference(sharp_model, ids, 10, temperature=1.5, top_p=0.9)
    assert expected != reference(sharp_model, ids, 10)  # not the greedy reply

    args = ["--max-new-tokens", "10", "--temperature", "1.5", "--top-p", "0.9", "--seed", "3"]
    out = run_cli(capsys, str(config), PROMPT, "--base", *args)
    assert out == tokenizer_of.decode(expected, skip_special_tokens=True) + "\n"


def test_stops_at_the_stop_tokens(config, sharp_model, tokenizer_of):
    cfg, _ = load_config(config)
    chat = chat_formatter(cfg, tokenizer_of)
    assert stop_token_ids(tokenizer_of, sharp_model, chat) == [ENDOFTEXT, IM_END]

    ids = templated(tokenizer_of, PROMPT)
    full = reference(sharp_model, ids, 12)
    at = next(index for index in range(1, len(full)) if full[index] not in full[:index])
    result = generate(sharp_model, tokenizer_of, ids, GenerateOptions(max_new_tokens=12), [full[at]])
    assert result.ids == full[:at]
    assert result.text == tokenizer_of.decode(full[:at], skip_special_tokens=True)


def test_streamed_text_equals_the_printed_text(sharp_model, tokenizer_of):
    ids = templated(tokenizer_of, PROMPT)
    options = GenerateOptions(max_new_tokens=10)
    streamed = io.StringIO()
    result = generate(sharp_model, tokenizer_of, ids, options, [IM_END], stream_to=streamed)
    expected = tokenizer_of.decode(reference(sharp_model, ids, 10), skip_special_tokens=True)
    assert result.text == expected
    assert streamed.getvalue() == expected + "\n"


def test_read_prompt():
    assert read_prompt(None, io.StringIO("Hello\nthere\n")) == "Hello\nthere"
    assert read_prompt("-", io.StringIO("Hello\r\n")) == "Hello"
    assert read_prompt("as given\n", io.StringIO("unused")) == "as given\n"


@pytest.mark.slow
def test_prompt_from_stdin(config, sharp_model, tokenizer_of):
    expected = reference(sharp_model, templated(tokenizer_of, PROMPT), 6)
    piped = subprocess.run(
        [sys.executable, "-m", "ftk.cli", "generate", str(config), "--base", "--max-new-tokens", "6"],
        input=PROMPT + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert piped.stdout == tokenizer_of.decode(expected, skip_special_tokens=True) + "\n"


def test_errors_name_what_is_wrong(capsys, config, tmp_path):
    assert main(["generate", str(config), PROMPT]) == 2  # nothing trained in output_dir yet
    assert capsys.readouterr().err.startswith("error: output_dir: ")
    assert main(["generate", str(config), PROMPT, "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --model: ")
    assert main(["generate", str(config), PROMPT, "--base", "--temperature", "-1"]) == 2
    assert capsys.readouterr().err.startswith("error: --temperature: ")
