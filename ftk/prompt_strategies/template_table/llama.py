"""Llama 3, Llama 3.2 Vision and Llama 4 (text turns).

``llama3``
    ``<|begin_of_text|>`` (the bos token), then
    ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content, trimmed}<|eot_id|>`` per message.
``llama3_2_vision``
    ``{bos}``, then always a system turn: ``Cutting Knowledge Date: December 2023``, ``Today Date:
    {date}`` (the ``date_string`` template variable, else today's date as ``26 Jul 2024`` is
    written), a blank line and the system message (trimmed); then Llama 3 turns, contents not
    trimmed.
``llama4``
    ``{bos}``, then ``<|header_start|>{role}<|header_end|>\\n\\n{content}<|eot|>`` per message (the
    system message trimmed, the others not).
"""

from __future__ import annotations

from ftk.prompt_strategies.template_table._shared import SPLIT_SYSTEM, no_tools

LLAMA3 = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{{- message['content'] | trim -}}"
    "{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

LLAMA3_2_VISION = (
    "{{- bos_token -}}"
    + no_tools("llama3_2_vision")
    + SPLIT_SYSTEM
    + "{%- set today = date_string if date_string is defined else strftime_now('%d %b %Y') -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n' -}}"
    "{{- 'Today Date: ' + today + '\\n\\n' -}}"
    "{%- if system is not none -%}{{- system | trim -}}{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- for message in turns -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

LLAMA4 = (
    "{{- bos_token -}}" + no_tools("llama4") + SPLIT_SYSTEM + "{%- if system is not none -%}"
    "{{- '<|header_start|>system<|header_end|>\\n\\n' + system | trim + '<|eot|>' -}}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{{- '<|header_start|>' + message['role'] + '<|header_end|>\\n\\n' + message['content'] + '<|eot|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|header_start|>assistant<|header_end|>\\n\\n' -}}{%- endif -%}"
)

TEMPLATES: dict[str, str] = {
    "llama3": LLAMA3,
    "llama3_2_vision": LLAMA3_2_VISION,
    "llama4": LLAMA4,
}
