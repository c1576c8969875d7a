"""Gemma (1, 2), Gemma 3 and 3n, Gemma 4 (text turns).

``gemma``
    ``{bos}<start_of_turn>{user|model}\\n{content, trimmed}<end_of_turn>\\n``; Gemma has no system
    role, so the system message (trimmed) is put in front of the first user message, separated by
    a blank line (the family's own template rejects a system message); user and assistant must
    alternate.
``gemma3``, ``gemma3n``
    The same turns; the system message goes in front of the first user message as it is (not
    trimmed), then a blank line.
``gemma4``, ``gemma4_unified``
    ``{bos}``, a system turn ``<|turn>system\\n{system, trimmed}<turn|>\\n`` when there is a system
    message (or ``enable_thinking``, which writes ``<|think|>\\n`` at its top), then
    ``<|turn>{user|model}\\n{content, trimmed}<turn|>\\n`` per message; a model turn loses what is
    between ``<|channel>`` and ``<channel|>``; an assistant message that follows another one
    continues its turn (no new header).  The generation prompt is ``<|turn>model\\n`` followed,
    unless ``enable_thinking``, by an empty thought channel ``<|channel>thought\\n<channel|>``.
"""

from __future__ import annotations

from ftk.prompt_strategies.template_table._shared import SPLIT_SYSTEM, alternation, no_tools

_MODEL_PROMPT = "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"

GEMMA = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_prefix = messages[0]['content'] | trim + '\\n\\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system_prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    + alternation("gemma")
    + "{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' -}}"
    "{{- (system_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' -}}"
    "{%- endfor -%}" + _MODEL_PROMPT
)

GEMMA3 = (
    no_tools("gemma3") + SPLIT_SYSTEM + "{{- bos_token -}}"
    "{%- for message in turns -%}"
    + alternation("gemma3", strict_roles=False)
    + "{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' -}}"
    "{%- if loop.first and system is not none -%}{{- system + '\\n\\n' -}}{%- endif -%}"
    "{{- message['content'] | trim + '<end_of_turn>\\n' -}}"
    "{%- endfor -%}" + _MODEL_PROMPT
)

GEMMA4 = (
    no_tools("gemma4") + "{%- set think_mode = enable_thinking is defined and enable_thinking -%}"
    "{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}"
    "{%- set system = messages[0]['content'] | trim -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
    "{{- bos_token -}}"
    "{%- if think_mode or system is not none -%}"
    "{{- '<|turn>system\\n' + ('<|think|>\\n' if think_mode else '') + (system or '') + '<turn|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] != 'assistant' -%}"
    "{{- '<|turn>' + message['role'] + '\\n' + message['content'] | trim -}}"
    "{%- else -%}"
    "{%- if loop.first or turns[loop.index0 - 1]['role'] != 'assistant' -%}{{- '<|turn>model\\n' -}}{%- endif -%}"
    # What the model wrote in a thought channel is not part of the conversation.
    "{%- set kept = namespace(text='') -%}"
    "{%- for piece in message['content'].split('<channel|>') -%}"
    "{%- set kept.text = kept.text + piece.split('<|channel>')[0] -%}"
    "{%- endfor -%}"
    "{{- kept.text | trim -}}"
    "{%- endif -%}"
    "{{- '<turn|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|turn>model\\n' -}}{%- if not think_mode -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}"
    "{%- endif -%}"
)

TEMPLATES: dict[str, str] = {
    "gemma": GEMMA,
    "gemma3": GEMMA3,
    "gemma3n": GEMMA3,
    "gemma4": GEMMA4,
    "gemma4_unified": GEMMA4,
}
