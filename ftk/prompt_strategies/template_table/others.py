"""Formats of one family each: Alpaca, DeepSeek V2 / V3, EXAONE 3 / 4, Jamba, LLaVA, Metharme, Phi-3 / 3.5.

``alpaca``
    ``{bos}``, the system message, ``### Instruction:\\n{user}`` and ``### Response:\\n{assistant}{eos}``,
    separated by blank lines; generation prompt ``\\n\\n### Response:\\n``.
``deepseek_v2``
    ``{bos}``, each system message followed by a blank line, ``<｜User｜>{user}`` and
    ``<｜Assistant｜>{assistant}{eos}``.
``deepseek_v3``
    ``{bos}``, every system message (joined by blank lines), ``<｜User｜>{user}`` and
    ``<｜Assistant｜>{assistant}<｜end▁of▁sentence｜>``; a reply loses what comes before a ``</think>``.
``exaone``
    ``[|system|]`` turn (empty when the conversation has none), ``[|{role}|]{content}`` ended by
    ``\\n`` for a user, ``[|endofturn|]\\n`` for the others; no bos.
``exaone4``
    ``[|{role}|]\\n{content}[|endofturn|]\\n``; a reply starts with a ``<think>`` block: empty, or
    with the reasoning on the last message when ``skip_think`` is false; generation prompt
    ``[|assistant|]\\n`` and an empty think block (an open one with ``enable_thinking``).
``jamba``
    ``<|startoftext|>``, a system turn (always, empty without a system message), then
    ``<|bom|><|{role}|> {content}`` turns separated and ended by ``<|eom|>``; a message ``name``
    is written in parentheses after the role.
``llava``
    ``{ROLE}: {content} `` per message (the system message without a role); generation prompt
    ``ASSISTANT:``.  There is no end-of-turn token: only the replies are trained.
``metharme``
    ``{bos}<|system|>{system}``, ``<|user|>{user}`` and ``<|model|>{assistant}`` (trimmed), then
    ``{eos}``; without a system message the Metharme role-play instruction is used.
``phi_3``
    ``{bos}``, ``<|system|>\\n{system}<|end|>\\n``, ``<|user|>\\n{user}<|end|>\\n<|assistant|>\\n`` and
    ``{assistant}<|end|>\\n`` (the assistant header comes with the user turn).
``phi_35``
    ``<|{role}|>\\n{content}<|end|>\\n`` per message (an empty system message is left out), no bos;
    generation prompt ``<|assistant|>\\n``.
"""

from __future__ import annotations

from ftk.prompt_strategies.template_table._shared import SPLIT_SYSTEM, literal, no_tools

ALPACA = (
    "{{- bos_token -}}" + no_tools("alpaca") + "{%- for message in messages -%}"
    "{%- if not loop.first -%}{{- '\\n\\n' -}}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- '### Instruction:\\n' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '### Response:\\n' + message['content'] + eos_token -}}"
    "{%- elif message['role'] == 'system' and loop.first -%}{{- message['content'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '\\n\\n### Response:\\n' -}}{%- endif -%}"
)

DEEPSEEK_V2 = (
    "{{- bos_token -}}" + no_tools("deepseek_v2") + "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- message['content'] + '\\n\\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '<｜User｜>' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '<｜Assistant｜>' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<｜Assistant｜>' -}}{%- endif -%}"
)

DEEPSEEK_V3 = (
    no_tools("deepseek_v3") + "{{- bos_token -}}"
    "{%- for message in messages if message['role'] == 'system' -%}"
    "{%- if not loop.first -%}{{- '\\n\\n' -}}{%- endif -%}{{- message['content'] -}}"
    "{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '<｜User｜>' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set reply = message['content'] if message['content'] is not none else '' -%}"
    "{%- if '</think>' in reply -%}{%- set reply = reply.split('</think>')[-1] -%}{%- endif -%}"
    "{{- '<｜Assistant｜>' + reply + '<｜end▁of▁sentence｜>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<｜Assistant｜>' -}}{%- endif -%}"
)

EXAONE = (
    no_tools("exaone")
    + "{%- if messages and messages[0]['role'] != 'system' -%}{{- '[|system|][|endofturn|]\\n' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '[|' + message['role'] + '|]' + message['content'] -}}"
    "{{- '\\n' if message['role'] == 'user' else '[|endofturn|]\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '[|assistant|]' -}}{%- endif -%}"
)

_EMPTY_THINK = "<think>\\n\\n</think>\\n\\n"

EXAONE4 = (
    no_tools("exaone4") + "{%- set hide_reasoning = skip_think if skip_think is defined else true -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('exaone4 template: unknown role ' ~ message['role']) -}}"
    "{%- endif -%}"
    "{{- '[|' + message['role'] + '|]\\n' -}}"
    "{%- if message['role'] != 'assistant' -%}{{- message['content'] -}}"
    "{%- elif message['content'] -%}"
    "{%- set reply = message['content'] -%}{%- set reasoning = none -%}"
    "{%- if '</think>' in reply -%}"
    "{%- set reasoning = reply.split('</think>')[0].strip() -%}"
    "{%- if reasoning.startswith('<think>') -%}{%- set reasoning = reasoning[7:].strip() -%}{%- endif -%}"
    "{%- set reply = reply.split('</think>')[-1].strip() -%}"
    "{%- endif -%}"
    "{%- if message['reasoning_content'] -%}{%- set reasoning = message['reasoning_content'] -%}{%- endif -%}"
    "{%- if loop.last and not hide_reasoning and reasoning is not none -%}"
    "{{- '<think>\\n' + reasoning + '\\n</think>\\n\\n' -}}"
    "{%- else -%}{{- '" + _EMPTY_THINK + "' -}}{%- endif -%}"
    "{{- reply -}}"
    "{%- endif -%}"
    "{{- '[|endofturn|]\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '[|assistant|]\\n' -}}"
    "{{- '<think>\\n' if enable_thinking is defined and enable_thinking is true else '"
    + _EMPTY_THINK
    + "' -}}"
    "{%- endif -%}"
)

JAMBA = (
    no_tools("jamba")
    + SPLIT_SYSTEM
    + "{{- '<|startoftext|><|bom|><|system|> ' + (system if system is not none else '') -}}"
    "{%- for message in turns -%}"
    "{{- '<|eom|><|bom|><|' + message['role'] + '|> ' -}}"
    "{%- if message['name'] is defined and message['name'] is not none -%}"
    "{{- '(' + message['name'] + ')' -}}"
    "{%- endif -%}"
    "{{- message['content'] or '' -}}"
    "{%- endfor -%}"
    "{{- '<|eom|>' -}}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|bom|><|' + (role_to_predict or 'assistant') + '|>' -}}"
    "{%- if generation_preamble is defined and generation_preamble and generation_preamble.strip() -%}"
    "{{- ' ' + generation_preamble -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

LLAVA = (
    no_tools("llava") + "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}{{- message['role'] | upper + ': ' -}}{%- endif -%}"
    "{{- message['content'] + ' ' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

_METHARME_SYSTEM = (
    "Enter RP mode. You shall reply to the user while staying in character. Your responses must be "
    "detailed, creative, immersive, and drive the scenario forward."
)

METHARME = (
    "{{- bos_token -}}"
    + no_tools("metharme")
    + SPLIT_SYSTEM
    + "{{- '<|system|>' + (system if system is not none else "
    + literal(_METHARME_SYSTEM)
    + ") -}}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}{{- '<|user|>' + message['content'].strip() -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '<|model|>' + message['content'].strip() -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{- '<|model|>' if add_generation_prompt else eos_token -}}"
)

PHI_3 = (
    "{{- bos_token -}}" + no_tools("phi_3") + "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{{- message['content'] + '<|end|>\\n' -}}"
    "{%- elif message['role'] in ['system', 'user'] -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' -}}"
    "{%- if message['role'] == 'user' -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

PHI_35 = (
    no_tools("phi_35") + "{%- for message in messages -%}"
    "{%- if message['role'] in ['user', 'assistant'] or (message['role'] == 'system' and message['content']) -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

TEMPLATES: dict[str, str] = {
    "alpaca": ALPACA,
    "deepseek_v2": DEEPSEEK_V2,
    "deepseek_v3": DEEPSEEK_V3,
    "exaone": EXAONE,
    "exaone4": EXAONE4,
    "jamba": JAMBA,
    "llava": LLAVA,
    "metharme": METHARME,
    "phi_3": PHI_3,
    "phi_35": PHI_35,
}
