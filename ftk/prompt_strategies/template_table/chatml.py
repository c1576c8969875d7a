"""ChatML and the templates built on it: Qwen 2.5, Qwen2-VL, Qwen3, Qwen3.5, Falcon-H1, Nemotron-H, Phi-4.

``chatml``
    ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; any roles.
``qwen_25``
    ChatML with a default system message ("You are Qwen, created by Alibaba Cloud. You are a
    helpful assistant."); tool definitions in the system turn, assistant tool calls as
    ``<tool_call>`` JSON blocks (arguments always written as JSON), tool results grouped into one
    user turn of ``<tool_response>`` blocks.
``qwen2_vl``
    ChatML with the default system message "You are a helpful assistant." (text turns only).
``qwen3``
    ChatML plus Qwen3's additions: tool definitions in the system turn (``<tools>`` JSON lines),
    assistant tool calls as ``<tool_call>`` JSON blocks, tool results grouped into one user turn
    of ``<tool_response>`` blocks, and reasoning as a ``<think>`` block on the assistant turns
    after the last user message (the final assistant turn always gets one, possibly empty).
    ``enable_thinking=false`` (a ``chat_template_kwargs`` key) makes the generation prompt an
    empty ``<think>`` block.
``qwen3_5``
    ``qwen3`` whose generation prompt opens a ``<think>`` block (``<think>\\n\\n``), or writes an
    empty one with ``enable_thinking=false``.
``falcon_h1``
    ``{bos}``, then ChatML; only a first system message is rendered (later ones are dropped).
``nemotron_h``
    ChatML for a first system message and user/assistant turns; any other role is an error.
``phi_4``
    ``<|im_start|>{role}<|im_sep|>{content}<|im_end|>`` with no line breaks, and the Phi-4
    reasoning system message when the conversation has none; roles other than user and
    assistant after the system message are dropped.
"""

from __future__ import annotations

from ftk.prompt_strategies.template_table._shared import SPLIT_SYSTEM, literal, no_tools

_GENERATION_PROMPT = "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"

CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}" + _GENERATION_PROMPT
)

QWEN2_VL = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}" + no_tools("qwen2_vl") + CHATML
)

FALCON_H1 = (
    "{{- bos_token -}}" + no_tools("falcon_h1") + "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' or loop.first -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}" + _GENERATION_PROMPT
)

NEMOTRON_H = (
    no_tools("nemotron_h") + "{%- for message in messages -%}"
    "{%- if message['role'] in ['user', 'assistant'] or (message['role'] == 'system' and loop.first) -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- else -%}{{- raise_exception('nemotron_h template: unexpected role ' ~ message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}" + _GENERATION_PROMPT
)

_PHI4_SYSTEM = (
    "You are Phi, a language model trained by Microsoft to help users. Your role as an assistant involves "
    "thoroughly exploring questions through a systematic thinking process before providing the final precise "
    "and accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, "
    "exploration, reassessment, reflection, backtracing, and iteration to develop well-considered thinking "
    "process. Please structure your response into two main sections: Thought and Solution using the specified "
    "format: <think> {Thought section} </think> {Solution section}. In the Thought section, detail your "
    "reasoning process in steps. Each step should include detailed considerations such as analysing "
    "questions, summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current "
    "steps, refining any errors, and revisiting previous steps. In the Solution section, based on various "
    "attempts, explorations, and reflections from the Thought section, systematically present the final "
    "solution that you deem correct. The Solution section should be logical, accurate, and concise and detail "
    "necessary steps needed to reach the conclusion. Now, try to solve the following question through the "
    "above guidelines:"
)

PHI_4 = (
    no_tools("phi_4")
    + SPLIT_SYSTEM
    + "{{- '<|im_start|>system<|im_sep|>' + (system if system is not none else "
    + literal(_PHI4_SYSTEM)
    + ") + '<|im_end|>' -}}"
    "{%- for message in turns if message['role'] in ['user', 'assistant'] -%}"
    "{{- '<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant<|im_sep|>' -}}{%- endif -%}"
)

# Qwen's wording for the tool section of the system turn (the models were trained on it).
_TOOLS_INTRO = (
    "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>"
)
_TOOLS_OUTRO = (
    "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>'
)
_TOOL_LIST = "{%- for tool in tools -%}{{- '\\n' -}}{{- tool | tojson -}}{%- endfor -%}"

# Tool results: consecutive ones share one user turn.
_TOOL_RESULT = (
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
)


def _qwen3(name: str, thinking_prompt: str) -> str:
    """Qwen3's layout; ``thinking_prompt`` follows the assistant header of the generation prompt
    unless ``enable_thinking`` is false (then an empty think block does)."""
    return (
        # The system turn: the system message, then the tool definitions when there are tools.
        "{%- set first_is_system = messages and messages[0]['role'] == 'system' -%}"
        "{%- if tools -%}"
        "{{- '<|im_start|>system\\n' -}}"
        "{%- if first_is_system -%}{{- messages[0]['content'] + '\\n\\n' -}}{%- endif -%}"
        "{{- '" + _TOOLS_INTRO + "' -}}" + _TOOL_LIST + "{{- '" + _TOOLS_OUTRO + "<|im_end|>\\n' -}}"
        "{%- elif first_is_system -%}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
        "{%- endif -%}"
        # Reasoning is shown only on the assistant turns after the last user message (none without one).
        "{%- set state = namespace(last_user=messages | length - 1) -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}{%- set state.last_user = loop.index0 -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- for message in messages -%}"
        "{%- set content = message['content'] if message['content'] is string else '' -%}"
        "{%- if message['role'] == 'system' and loop.first -%}"
        "{%- elif message['role'] in ['user', 'system'] -%}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{%- set reasoning = '' -%}"
        "{%- if message['reasoning_content'] is string -%}{%- set reasoning = message['reasoning_content'] -%}"
        "{%- elif '</think>' in content -%}"
        "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}"
        "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
        "{%- endif -%}"
        "{{- '<|im_start|>assistant\\n' -}}"
        "{%- if loop.index0 > state.last_user and (loop.last or reasoning) -%}"
        "{{- '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') -}}"
        "{%- else -%}{{- content -}}{%- endif -%}"
        "{%- for call in message['tool_calls'] or [] -%}"
        "{%- set function = call['function'] if call['function'] is defined else call -%}"
        "{%- if not loop.first or content -%}{{- '\\n' -}}{%- endif -%}"
        "{{- '<tool_call>\\n{\"name\": \"' + function['name'] + '\", \"arguments\": ' -}}"
        "{%- if function['arguments'] is string -%}{{- function['arguments'] -}}"
        "{%- else -%}{{- function['arguments'] | tojson -}}{%- endif -%}"
        "{{- '}\\n</tool_call>' -}}"
        "{%- endfor -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- elif message['role'] == 'tool' -%}" + _TOOL_RESULT + "{%- else -%}"
        "{{- raise_exception('" + name + " template: unknown role ' ~ message['role']) -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        "{{- '<|im_start|>assistant\\n' -}}"
        "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
        "{%- else -%}{{- '" + thinking_prompt + "' -}}{%- endif -%}"
        "{%- endif -%}"
    )


QWEN3 = _qwen3("qwen3", "")
QWEN3_5 = _qwen3("qwen3_5", "<think>\\n\\n")

QWEN_25 = (
    "{%- set first_is_system = messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + (messages[0]['content'] if first_is_system else "
    "'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.') -}}"
    "{%- if tools -%}{{- '\\n\\n" + _TOOLS_INTRO + "' -}}" + _TOOL_LIST + "{{- '" + _TOOLS_OUTRO + "' -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- for message in messages -%}"
    "{%- set content = message['content'] -%}"
    "{%- if message['role'] == 'system' and loop.first -%}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] -%}"
    "{{- '<|im_start|>assistant' -}}{%- if content -%}{{- '\\n' + content -}}{%- endif -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set function = call['function'] if call['function'] is defined else call -%}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + function['name'] + '\", \"arguments\": ' -}}"
    "{{- function['arguments'] | tojson -}}{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    + _TOOL_RESULT
    + "{%- elif message['role'] in ['user', 'assistant', 'system'] -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}" + _GENERATION_PROMPT
)

TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "qwen_25": QWEN_25,
    "qwen2_vl": QWEN2_VL,
    "qwen3": QWEN3,
    "qwen3_5": QWEN3_5,
    "falcon_h1": FALCON_H1,
    "nemotron_h": NEMOTRON_H,
    "phi_4": PHI_4,
}
