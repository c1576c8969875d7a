"""The chat templates that ship with ftk (``chat_template: <name>``), one module per family group.

Each reproduces, for conversations of system, user and assistant messages, what the model
family's own template renders (``bench/template_parity.py`` compares them): the same names work
with any tokenizer that has the family's control tokens.  The names are those axolotl accepts,
plus ftk's ``mistral``.  Where a built-in differs from the family's template on purpose, the
module docstring says so; ``DIFFERENCES`` lists those names.  Tools, tool calls and tool results
are rendered by ``qwen3``, ``qwen3_5`` and ``qwen_25``; ``chatml`` renders any role as it is;
every other built-in stops with an error naming itself when a conversation has them.
"""

from __future__ import annotations

from ftk.prompt_strategies.template_table import chatml, cohere, gemma, llama, mistral, others

BUILTIN_TEMPLATES: dict[str, str] = dict(
    sorted(
        {
            **chatml.TEMPLATES,
            **cohere.TEMPLATES,
            **gemma.TEMPLATES,
            **llama.TEMPLATES,
            **mistral.TEMPLATES,
            **others.TEMPLATES,
        }.items()
    )
)

#: End-of-turn strings for the built-ins whose replies end with more than one control token.
END_OF_TURN: dict[str, str] = dict(cohere.END_OF_TURN)

#: Built-ins that differ on purpose from the family's own template, and how.
DIFFERENCES: dict[str, str] = {
    "gemma": "the family's template rejects a system message; ftk puts it (trimmed) before the first user message",
    "qwen3": (
        "the generation prompt is <|im_start|>assistant\\n as in Qwen3's own template (axolotl's copy adds "
        "<think>\\n\\n)"
    ),
    **{
        name: (
            "the system message goes into the last user message even when a reply follows it (the family's "
            "template writes it only when that user message ends the conversation, and drops it otherwise)"
        )
        for name in ("mistral_v2v3", "mistral_v3_tekken", "pixtral")
    },
}
