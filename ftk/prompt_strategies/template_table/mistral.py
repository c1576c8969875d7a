"""Mistral's instruction formats: ftk's ``mistral`` and the four generations axolotl names, Pixtral.

``mistral``
    ``{bos}[INST]{user}[/INST]{assistant}{eos}`` (the Tekken-tokenizer layout, no spaces around the
    instruction markers); the system message is put in front of the first user message, separated
    by a blank line; user and assistant must alternate.
``mistral_v1``
    ``{bos} [INST] {user} [/INST] {assistant}{eos}``, spaces around the markers; the system message
    opens the first user message (a blank line after it).
``mistral_v2v3``
    ``{bos}[INST] {user}[/INST] {assistant, trimmed}{eos}``; the system message opens the last user
    message.
``mistral_v3_tekken``, ``pixtral``
    ``{bos}[INST]{user}[/INST]{assistant}{eos}``; the system message opens the last user message.
``mistral_v7_tekken``
    ``{bos}[SYSTEM_PROMPT]{system}[/SYSTEM_PROMPT]``, then ``[INST]{user}[/INST]`` and
    ``{assistant}{eos}``; later system messages get their own ``[SYSTEM_PROMPT]`` block; without a
    system message, Mistral Small 3's default one (with today's date) is written.

None has a generation prompt: a prompt already ends with ``[/INST]``.  Where the model family's
own templates put the system message into the *last* user message, they write it only when that
message is the conversation's last one, which a training conversation (ending with a reply)
never is: there the system message would be lost.  ftk's templates put it into the last user
message of the conversation, as Mistral's own tokenizer library does for training data.
"""

from __future__ import annotations

from ftk.prompt_strategies.template_table._shared import SPLIT_SYSTEM, alternation, literal, no_tools

# Shared by the templates whose system message joins a user message (trimmed, as ftk's mistral
# and gemma do).
_SYSTEM_INTO_FIRST_USER = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_prefix = messages[0]['content'] | trim + '\\n\\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system_prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
)

MISTRAL = (
    "{{- bos_token -}}"
    + _SYSTEM_INTO_FIRST_USER
    + "{%- for message in turns -%}"
    + alternation("mistral")
    + "{%- if message['role'] == 'user' -%}"
    "{{- '[INST]' + (system_prefix if loop.first else '') + message['content'] + '[/INST]' -}}"
    "{%- else -%}{{- message['content'] + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)

MISTRAL_V1 = (
    no_tools("mistral_v1") + SPLIT_SYSTEM + "{{- bos_token -}}"
    "{%- for message in turns -%}" + alternation("mistral_v1") + "{%- if message['role'] == 'user' -%}"
    "{{- ' [INST] ' + (system + '\\n\\n' if loop.first and system is not none else '') -}}"
    "{{- message['content'] + ' [/INST]' -}}"
    "{%- else -%}{{- ' ' + message['content'] + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)


def _system_into_last_user(name: str, space: str, reply: str) -> str:
    """``[INST]{space}{user}[/INST]`` turns with the system message in the last user turn, and
    ``reply`` (Jinja, from ``message``) for each assistant turn."""
    return (
        no_tools(name) + SPLIT_SYSTEM + "{%- set state = namespace(last_user=-1) -%}"
        "{%- for message in turns -%}"
        "{%- if message['role'] == 'user' -%}{%- set state.last_user = loop.index0 -%}{%- endif -%}"
        "{%- endfor -%}"
        "{{- bos_token -}}"
        "{%- for message in turns -%}" + alternation(name) + "{%- if message['role'] == 'user' -%}"
        "{{- '[INST]" + space + "' -}}"
        "{%- if system is not none and loop.index0 == state.last_user -%}{{- system + '\\n\\n' -}}{%- endif -%}"
        "{{- message['content'] + '[/INST]' -}}"
        "{%- else -%}{{- " + reply + " -}}{%- endif -%}"
        "{%- endfor -%}"
    )


MISTRAL_V2V3 = _system_into_last_user("mistral_v2v3", " ", "' ' + message['content'] | trim + eos_token")
MISTRAL_V3_TEKKEN = _system_into_last_user("mistral_v3_tekken", "", "message['content'] + eos_token")
PIXTRAL = _system_into_last_user("pixtral", "", "message['content'] + eos_token")

_V7_DEFAULT_SYSTEM = (
    "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup "
    "headquartered in Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is "
)
_V7_DEFAULT_SYSTEM_END = (
    ".\n\nWhen you're not sure about some information, you say that you don't have the information and don't "
    "make up anything.\nIf the user's question is not clear, ambiguous, or does not provide enough context for "
    "you to accurately answer the question, you do not try to answer it right away and you rather ask the user "
    'to clarify their request (e.g. "What are some good restaurants around me?" => "Where are you?" or "When '
    'is the next flight to Tokyo" => "Where do you travel from?")'
)

MISTRAL_V7_TEKKEN = (
    no_tools("mistral_v7_tekken") + SPLIT_SYSTEM + "{%- if system is none -%}"
    "{%- set system = "
    + literal(_V7_DEFAULT_SYSTEM)
    + " + strftime_now('%Y-%m-%d') + "
    + literal(_V7_DEFAULT_SYSTEM_END)
    + " -%}"
    "{%- endif -%}"
    "{{- bos_token -}}{{- '[SYSTEM_PROMPT]' + system + '[/SYSTEM_PROMPT]' -}}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}{{- '[INST]' + message['content'] + '[/INST]' -}}"
    "{%- elif message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- message['content'] + eos_token -}}"
    "{%- else -%}{{- raise_exception('mistral_v7_tekken template: unknown role ' ~ message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

TEMPLATES: dict[str, str] = {
    "mistral": MISTRAL,
    "mistral_v1": MISTRAL_V1,
    "mistral_v2v3": MISTRAL_V2V3,
    "mistral_v3_tekken": MISTRAL_V3_TEKKEN,
    "mistral_v7_tekken": MISTRAL_V7_TEKKEN,
    "pixtral": PIXTRAL,
}
