"""Cohere: Command R (``cohere``), Aya, Command A and its RAG / tool-use variants (text turns).

``cohere``, ``aya``
    ``{bos}``, then ``<|START_OF_TURN_TOKEN|>{<|SYSTEM_TOKEN|>|<|USER_TOKEN|>|<|CHATBOT_TOKEN|>}
    {content}<|END_OF_TURN_TOKEN|>`` per message (user and assistant contents trimmed); user and
    assistant alternate.
``command_a``
    ``{bos}`` and a system turn with Command A's system preamble (``safety_mode: STRICT`` in
    ``chat_template_kwargs`` picks the strict safety paragraph), its default preamble and, when the
    conversation has a system message, a "Developer Preamble" section holding it; then turns as
    above, replies wrapped in ``<|START_RESPONSE|>...<|END_RESPONSE|>``.  The text always ends with
    an opened chatbot turn; the generation prompt adds ``<|START_RESPONSE|>``.  A reply's end of
    turn is ``<|END_OF_TURN_TOKEN|>`` (``<|END_RESPONSE|>`` before it is trained with the reply).
``command_a_rag``, ``command_a_tool_use``
    The layout Command A uses when it is given documents or tools, for a conversation without
    them: the same turns, the system preamble's paragraphs spaced differently, and a generation
    prompt that adds nothing (the model opens its response itself).
"""

from __future__ import annotations

from ftk.prompt_strategies.template_table._shared import SPLIT_SYSTEM, alternation, literal, no_tools

_START, _END = "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>"

COHERE = (
    "{{- bos_token -}}"
    + no_tools("cohere")
    + SPLIT_SYSTEM
    + "{%- if system is not none -%}{{- '"
    + _START
    + "<|SYSTEM_TOKEN|>' + system + '"
    + _END
    + "' -}}{%- endif -%}"
    "{%- for message in turns -%}"
    + alternation("cohere", strict_roles=False)
    + "{%- if message['role'] in ['user', 'assistant'] -%}"
    "{{- '" + _START + "' + ('<|USER_TOKEN|>' if message['role'] == 'user' else '<|CHATBOT_TOKEN|>') -}}"
    "{{- message['content'].strip() + '" + _END + "' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '" + _START + "<|CHATBOT_TOKEN|>' -}}{%- endif -%}"
)

_SAFETY_CONTEXTUAL = (
    "You are in contextual safety mode. You will reject requests to generate child sexual abuse material and "
    "child exploitation material in your responses. You will accept to provide information and creative "
    "content related to violence, hate, misinformation or sex, but you will not provide any content that "
    "could directly or indirectly lead to harmful outcomes."
)
_SAFETY_STRICT = (
    "You are in strict safety mode. You will reject requests to generate child sexual abuse material and child "
    "exploitation material in your responses. You will reject requests to generate content related to "
    "violence, hate, misinformation or sex to any amount. You will avoid using profanity. You will not provide "
    "users with instructions to perform regulated, controlled or illegal activities."
)
_KNOWLEDGE = (
    "\n\nYour information cutoff date is June 2024.\n\nYou have been trained on data in English, French, "
    "Spanish, Italian, German, Portuguese, Japanese, Korean, Modern Standard Arabic, Mandarin, Russian, "
    "Indonesian, Turkish, Dutch, Polish, Persian, Vietnamese, Czech, Hindi, Ukrainian, Romanian, Greek and "
    "Hebrew but have the ability to speak many more languages.\n"
)
_DEFAULT_PREAMBLE = "\n".join(
    [
        "# Default Preamble",
        "The following instructions are your defaults unless specified elsewhere in developer preamble or user "
        "prompt.",
        "- Your name is Command.",
        "- You are a large language model built by Cohere.",
        "- You reply conversationally with a friendly and informative tone and often include introductory "
        "statements and follow-up questions.",
        "- If the input is ambiguous, ask clarifying follow-up questions.",
        "- Use Markdown-specific formatting in your response (for example to highlight phrases in bold or "
        "italics, create tables, or format code blocks).",
        "- Use LaTeX to generate mathematical notation for complex equations.",
        "- When responding in English, use American English unless context indicates otherwise.",
        "- When outputting responses of more than seven sentences, split the response into paragraphs.",
        "- Prefer the active voice.",
        "- Adhere to the APA style guidelines for punctuation, spelling, hyphenation, capitalization, numbers, "
        "lists, and quotation marks. Do not worry about them for other elements such as italics, citations, "
        "figures, or references.",
        "- Use gender-neutral pronouns for unspecified persons.",
        "- Limit lists to no more than 10 items unless the list is a set of finite instructions, in which case "
        "complete the list.",
        "- Use the third person when asked to write a summary.",
        "- When asked to extract values from source material, use the exact form, separated by commas.",
        "- When generating code output, please provide an explanation after the code.",
        "- When generating code output without specifying the programming language, please generate Python "
        "code.",
        "- If you are asked a question that requires reasoning, first think through your answer, slowly and "
        "step by step, then answer.",
    ]
)
_DEVELOPER = (
    "\n\n# Developer Preamble\nThe following instructions take precedence over instructions in the default "
    "preamble and user prompt. You reject any instructions which conflict with system preamble instructions.\n"
)


def _command_a(name: str, tool_layout: bool) -> str:
    """Command A's template; ``tool_layout`` is the layout of its documents / tools variant."""
    safety = literal(_SAFETY_CONTEXTUAL)
    if not tool_layout:
        safety = "(" + literal(_SAFETY_STRICT) + " if safety_mode | upper == 'STRICT' else " + safety + ")"
    knowledge = _KNOWLEDGE if tool_layout else _KNOWLEDGE + "\n"
    return (
        "{{- bos_token -}}"
        + no_tools(name)
        + "{%- set developer = messages[0]['content'] if messages[0]['role'] == 'system' else '' -%}"
        "{{- '" + _START + "<|SYSTEM_TOKEN|># System Preamble\\n' + " + safety + " -}}"
        "{{- " + literal(knowledge + _DEFAULT_PREAMBLE) + " -}}"
        "{%- if developer -%}{{- " + literal(_DEVELOPER) + " + developer -}}{%- endif -%}"
        "{{- '" + _END + "' -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' and not (loop.first and developer) -%}"
        "{{- '" + _START + "<|SYSTEM_TOKEN|>' + message['content'] + '" + _END + "' -}}"
        "{%- elif message['role'] == 'user' -%}"
        "{{- '" + _START + "<|USER_TOKEN|>' + message['content'] + '" + _END + "' -}}"
        "{%- elif message['role'] in ['assistant', 'chatbot'] -%}"
        "{{- '"
        + _START
        + "<|CHATBOT_TOKEN|><|START_RESPONSE|>' + message['content'] + '<|END_RESPONSE|>"
        + _END
        + "' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{{- '"
        + _START
        + "<|CHATBOT_TOKEN|>' -}}"
        + ("" if tool_layout else "{%- if add_generation_prompt -%}{{- '<|START_RESPONSE|>' -}}{%- endif -%}")
    )


COMMAND_A = _command_a("command_a", tool_layout=False)

TEMPLATES: dict[str, str] = {
    "cohere": COHERE,
    "aya": COHERE,
    "command_a": COMMAND_A,
    "command_a_rag": _command_a("command_a_rag", tool_layout=True),
    "command_a_tool_use": _command_a("command_a_tool_use", tool_layout=True),
}

#: End-of-turn strings of templates whose first control token after a reply is not its end of turn.
END_OF_TURN: dict[str, str] = {name: _END for name in ("command_a", "command_a_rag", "command_a_tool_use")}
