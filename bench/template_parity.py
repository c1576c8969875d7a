"""Do ftk's built-in chat templates render what the model families' own templates render?

Takes a folder of reference templates, one ``<name>.jinja`` per chat_template name (axolotl's
``src/axolotl/utils/chat_templates/templates/``, copies of each family's official template), renders
``--conversations`` seeded random conversations with the reference and with ftk's built-in of the
same name, and prints one row per name: conversations rendered, how many came out identical (both
rejecting a conversation counts as identical), and the first difference. Conversations are what
ftk trains on: an optional system message, then user and assistant turns, ending with a reply
(rendered as is) or with a user message (rendered with ``add_generation_prompt``); contents have
stray spaces and line breaks (a few are empty), some replies start with a ``<think>`` block, and
a few conversations have a second system message; some are rendered with template variables
(``enable_thinking``, ``skip_think``, ``safety_mode``).

Both templates are rendered in transformers' chat-template environment (ftk's overlay of it),
with the family's bos and eos tokens and a fixed clock (``--date``) for templates that write
today's date. The built-ins that differ on purpose are marked (``DIFFERENCES`` in
``ftk.prompt_strategies.template_table``).

``--write-renderings FILE`` also writes the references' renderings of the fixed conversations
``FIXED`` (tests/data/template_renderings.json, read by tests/test_builtin_templates.py), with
each name's tokens.

    git -C ../axolotl show HEAD:src/axolotl/utils/chat_templates/templates/...  # or a checkout
    python bench/template_parity.py --reference /tmp/axolotl-templates
    python bench/template_parity.py --reference /tmp/axolotl-templates \\
        --write-renderings tests/data/template_renderings.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ftk.integrations.chat_template_spans import compile_tracking_template
from ftk.prompt_strategies.template_table import BUILTIN_TEMPLATES, DIFFERENCES

# bos, eos and the other control tokens of each family's tokenizer (special tokens, one token each).
_COHERE = (
    "<BOS_TOKEN>",
    "<|END_OF_TURN_TOKEN|>",
    ["<|START_OF_TURN_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>"],
)
_COMMAND_A = (*_COHERE[:2], [*_COHERE[2], "<|START_RESPONSE|>", "<|END_RESPONSE|>"])
_GEMMA = ("<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"])
_GEMMA4 = ("<bos>", "<eos>", ["<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>"])
_QWEN = (None, "<|im_end|>", ["<|im_start|>", "<think>", "</think>"])
_MISTRAL = ("<s>", "</s>", ["[INST]", "[/INST]"])
_DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", ["<｜User｜>", "<｜Assistant｜>"])
_EXAONE = ("[BOS]", "[|endofturn|]", ["[|system|]", "[|user|]", "[|assistant|]"])
FAMILY_TOKENS: dict[str, tuple[str | None, str, list[str]]] = {
    "alpaca": ("<s>", "</s>", []),
    "aya": _COHERE,
    "chatml": (None, "<|im_end|>", ["<|im_start|>"]),
    "cohere": _COHERE,
    "command_a": _COMMAND_A,
    "command_a_rag": _COMMAND_A,
    "command_a_tool_use": _COMMAND_A,
    "deepseek_v2": _DEEPSEEK,
    "deepseek_v3": (*_DEEPSEEK[:2], [*_DEEPSEEK[2], "<think>", "</think>"]),
    "exaone": _EXAONE,
    "exaone4": (*_EXAONE[:2], [*_EXAONE[2], "<think>", "</think>"]),
    "falcon_h1": ("<|begin_of_text|>", "<|end_of_text|>", ["<|im_start|>", "<|im_end|>"]),
    "gemma": _GEMMA,
    "gemma3": _GEMMA,
    "gemma3n": _GEMMA,
    "gemma4": _GEMMA4,
    "gemma4_unified": _GEMMA4,
    "jamba": ("<|startoftext|>", "<|eom|>", ["<|bom|>", "<|system|>", "<|user|>", "<|assistant|>"]),
    "llama3": (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "llama3_2_vision": ("<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>"]),
    "llama4": ("<|begin_of_text|>", "<|eot|>", ["<|header_start|>", "<|header_end|>"]),
    "llava": ("<s>", "</s>", []),
    "metharme": ("<s>", "</s>", []),
    "mistral": _MISTRAL,
    "mistral_v1": _MISTRAL,
    "mistral_v2v3": _MISTRAL,
    "mistral_v3_tekken": _MISTRAL,
    "mistral_v7_tekken": ("<s>", "</s>", [*_MISTRAL[2], "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]),
    "nemotron_h": ("<s>", "<|im_end|>", ["<|im_start|>"]),
    "phi_3": ("<s>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
    "phi_35": ("<s>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
    "phi_4": (None, "<|im_end|>", ["<|im_start|>", "<|im_sep|>"]),
    "pixtral": _MISTRAL,
    "qwen2_vl": _QWEN,
    "qwen3": _QWEN,
    "qwen3_5": _QWEN,
    "qwen_25": (None, "<|im_end|>", ["<|im_start|>"]),
}


class Case(NamedTuple):
    """A conversation to render: messages, whether with the generation prompt, tool definitions."""

    messages: list[dict[str, Any]]
    prompt: bool
    tools: list[dict[str, Any]] | None = None
    kwargs: dict[str, Any] | None = None


#: The fixed conversations whose renderings the tests check: as ``Case`` values.
FIXED: dict[str, Case] = {
    "system_one_turn": Case(
        [
            {"role": "system", "content": "You are kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there"},
        ],
        False,
    ),
    "two_turns": Case(
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "It is 6."},
        ],
        False,
    ),
    "padded_system_two_turns": Case(
        [
            {"role": "system", "content": "  Be brief.\n"},
            {"role": "user", "content": " Name a colour. "},
            {"role": "assistant", "content": "\nBlue. "},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Green."},
        ],
        False,
    ),
    "prompt_with_system": Case(
        [{"role": "system", "content": "You are kind."}, {"role": "user", "content": "Hi"}],
        True,
    ),
    "prompt_second_turn": Case(
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
        ],
        True,
    ),
}

# Template variables some families read (given as chat_template_kwargs).
_KWARGS = [
    {"enable_thinking": True},
    {"enable_thinking": False},
    {"skip_think": False},
    {"safety_mode": "STRICT"},
]
_WORDS = "the a cat sat on mat why how many 42 blue green tea über 東京 ok yes no".split()
_PADS = ["", "", "", " ", "  ", "\n", "\n\n", " \n"]


def _text(rng: random.Random) -> str:
    if rng.random() < 0.03:
        return ""
    words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 6))]
    if rng.random() < 0.2:
        words.insert(rng.randint(0, len(words)), "\n")
    return rng.choice(_PADS) + " ".join(words).replace(" \n ", "\n") + rng.choice(_PADS)


def random_conversation(rng: random.Random) -> Case:
    """An optional system message, 1 to 3 exchanges (rarely a system message between them); ends
    with a reply, or with a user message to be rendered with the generation prompt."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": _text(rng)}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        if messages and rng.random() < 0.05:
            messages.append({"role": "system", "content": _text(rng)})
        messages.append({"role": "user", "content": _text(rng)})
        reply = _text(rng)
        if rng.random() < 0.15:
            reply = f"<think>\n{_text(rng).strip()}\n</think>\n\n{reply}"
        messages.append({"role": "assistant", "content": reply})
    prompt = rng.random() < 0.3
    kwargs = rng.choice(_KWARGS) if rng.random() < 0.3 else None
    return Case(messages[:-1], True, kwargs=kwargs) if prompt else Case(messages, False, kwargs=kwargs)


_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def random_tool_conversation(rng: random.Random) -> Case:
    """A conversation with tool definitions, assistant tool calls (arguments as an object) and tool
    results, for the templates that render tools (``TOOL_TEMPLATES``)."""
    case = random_conversation(rng)
    messages = [m for m in case.messages if m["role"] != "system" or m is case.messages[0]]
    at = next(i for i, m in enumerate(messages) if m["role"] == "user") + 1
    calls = [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": rng.choice(_WORDS)}}}
        for _ in range(rng.randint(1, 2))
    ]
    content = _text(rng) if rng.random() < 0.5 else ""
    results = [{"role": "tool", "content": _text(rng).strip() or "ok"} for _ in calls]
    messages[at:at] = [{"role": "assistant", "content": content, "tool_calls": calls}, *results]
    return Case(messages, case.prompt, _TOOLS if rng.random() < 0.8 else None, case.kwargs)


#: The built-ins that render tools: they also get ``random_tool_conversation`` cases.
TOOL_TEMPLATES = frozenset({"qwen3", "qwen3_5", "qwen_25"})


def _has_system(case: Case) -> bool:
    return case.messages[0]["role"] == "system"


#: Where each built-in that differs on purpose (``DIFFERENCES``) may differ: other differences count.
DECLARED: dict[str, Callable[[Case], bool]] = {
    "gemma": _has_system,
    "mistral_v2v3": lambda case: _has_system(case) and not case.prompt,
    "mistral_v3_tekken": lambda case: _has_system(case) and not case.prompt,
    "pixtral": lambda case: _has_system(case) and not case.prompt,
    "qwen3": lambda case: case.prompt,
}


def render(template: str, name: str, case: Case, date: datetime.date) -> str:
    """The rendering, or ``error: <message>`` when the template rejects the conversation."""
    bos, eos, _ = FAMILY_TOKENS.get(name, ("<s>", "</s>", []))
    tokens = {"eos_token": eos} if bos is None else {"bos_token": bos, "eos_token": eos}
    try:
        return compile_tracking_template(template).render(
            messages=[dict(message) for message in case.messages],
            tools=case.tools,
            documents=None,
            add_generation_prompt=case.prompt,
            strftime_now=date.strftime,
            **tokens,
            **(case.kwargs or {}),
        )
    except Exception as exc:  # a rejected conversation is a result, compared like a rendering
        return f"error: {exc}"


def _first_difference(reference: str, ours: str) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(reference, ours, strict=False)) if a != b),
        min(len(reference), len(ours)),
    )
    return f"at {at}: reference {reference[max(0, at - 15) : at + 25]!r} / ftk {ours[max(0, at - 15) : at + 25]!r}"


def parity(reference_dir: Path, count: int, seed: int, date: datetime.date) -> list[dict[str, Any]]:
    """One row per reference template: conversations, identical renderings, differences on purpose
    (``DECLARED``) and the first other difference."""
    rng = random.Random(seed)
    plain = [random_conversation(rng) for _ in range(count)]
    with_tools = [random_tool_conversation(rng) for _ in range(count // 3)]
    rows = []
    for path in sorted(reference_dir.glob("*.jinja")):
        name = path.stem
        row: dict[str, Any] = {
            "name": name,
            "conversations": 0,
            "identical": 0,
            "on_purpose": 0,
            "first_difference": "",
        }
        if name not in BUILTIN_TEMPLATES:
            row["first_difference"] = "not built into ftk"
            rows.append(row)
            continue
        reference = path.read_text(encoding="utf-8")
        declared = DECLARED.get(name, lambda case: False)
        for index, case in enumerate(plain + with_tools if name in TOOL_TEMPLATES else plain):
            expected = render(reference, name, case, date)
            got = render(BUILTIN_TEMPLATES[name], name, case, date)
            row["conversations"] += 1
            if expected == got or (expected.startswith("error: ") and got.startswith("error: ")):
                row["identical"] += 1
            elif declared(case):
                row["on_purpose"] += 1
            elif not row["first_difference"]:
                row["first_difference"] = f"#{index} {_first_difference(expected, got)}"
        rows.append(row)
    return rows


def write_renderings(reference_dir: Path, out: Path, date: datetime.date) -> None:
    """The references' renderings of ``FIXED``, with each name's tokens, as JSON."""
    templates = {}
    for path in sorted(reference_dir.glob("*.jinja")):
        name = path.stem
        bos, eos, controls = FAMILY_TOKENS[name]
        reference = path.read_text(encoding="utf-8")
        templates[name] = {
            "bos_token": bos,
            "eos_token": eos,
            "control_tokens": controls,
            "renderings": {key: render(reference, name, case, date) for key, case in FIXED.items()},
        }
    data = {
        "about": "Renderings of the reference chat templates (axolotl's copies of each family's template) "
        "by bench/template_parity.py --write-renderings; 'error: ...' where the reference rejects the conversation.",
        "date": date.isoformat(),
        "conversations": {
            key: {"messages": case.messages, "add_generation_prompt": case.prompt}
            for key, case in FIXED.items()
        },
        "templates": templates,
    }
    out.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference", type=Path, required=True, help="folder of <name>.jinja reference templates"
    )
    parser.add_argument("--conversations", type=int, default=300, help="random conversations per template")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--date",
        type=datetime.date.fromisoformat,
        default=datetime.date(2024, 7, 26),
        help="the clock's date for templates that write today's date",
    )
    parser.add_argument(
        "--write-renderings", type=Path, help="also write the fixed conversations' renderings here"
    )
    parser.add_argument("--json-out", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    if not any(args.reference.glob("*.jinja")):
        parser.error(f"--reference {args.reference}: no .jinja files")
    rows = parity(args.reference, args.conversations, args.seed, args.date)
    print("| name | conversations | identical | different on purpose | first other difference |")
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        print(
            f"| {row['name']} | {row['conversations']} | {row['identical']} | {row['on_purpose']} "
            f"| {row['first_difference']} |"
        )
    built_in = [row for row in rows if row["conversations"]]
    exact = sum(row["identical"] == row["conversations"] for row in built_in)
    unexplained = sum(bool(row["first_difference"]) for row in built_in)
    print(
        f"\n{len(built_in)} of {len(rows)} names built in; {exact} identical on every conversation; "
        f"{unexplained} with differences not declared in DIFFERENCES"
    )
    for name, why in DIFFERENCES.items():
        print(f"- {name}: {why}")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if args.write_renderings:
        write_renderings(args.reference, args.write_renderings, args.date)
        print(f"renderings written to {args.write_renderings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
