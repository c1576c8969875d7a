"""Chat templates that ship with ftk, and the choice between them and the tokenizer's own.

Each built-in reproduces the turn format of a model family (``chat_template: <name>``), written
here so that the same names work with any tokenizer that has the family's control tokens:

``chatml``
    ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; any roles.
``llama3``
    ``<|begin_of_text|>`` (the bos token), then
    ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content, trimmed}<|eot_id|>`` per message.
``qwen3``
    ChatML plus Qwen3's additions: tool definitions in the system turn (``<tools>`` JSON lines),
    assistant tool calls as ``<tool_call>`` JSON blocks, tool results grouped into one user turn
    of ``<tool_response>`` blocks, and reasoning as a ``<think>`` block on the assistant turns
    after the last user message (the final assistant turn always gets one, possibly empty).
    ``enable_thinking=false`` (a ``chat_template_kwargs`` key) makes the generation prompt an
    empty ``<think>`` block.
``mistral``
    ``{bos}[INST]{user}[/INST]{assistant}{eos}`` (the Tekken-tokenizer layout, no spaces around the
    instruction markers); the system message is put in front of the first user message, separated
    by a blank line; user and assistant must alternate.
``gemma``
    ``{bos}<start_of_turn>{user|model}\\n{content, trimmed}<end_of_turn>\\n``; Gemma has no system
    role, so the system message is put in front of the first user message, separated by a blank
    line; user and assistant must alternate.

With ``add_generation_prompt`` each ends with the header of an assistant turn (for ``mistral``
there is nothing to add: the prompt already ends with ``[/INST]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic_core import PydanticCustomError

from ftk.core.errors import FtkError, suggest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

LLAMA3 = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{{- message['content'] | trim -}}"
    "{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

# Qwen3's wording for the tool section of the system turn (the model was trained on it).
_QWEN3_TOOLS_INTRO = (
    "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>"
)
_QWEN3_TOOLS_OUTRO = (
    "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>'
)

QWEN3 = (
    # The system turn: the system message, then the tool definitions when there are tools.
    "{%- set first_is_system = messages and messages[0]['role'] == 'system' -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if first_is_system -%}{{- messages[0]['content'] + '\\n\\n' -}}{%- endif -%}"
    "{{- '" + _QWEN3_TOOLS_INTRO + "' -}}"
    "{%- for tool in tools -%}{{- '\\n' -}}{{- tool | tojson -}}{%- endfor -%}"
    "{{- '" + _QWEN3_TOOLS_OUTRO + "<|im_end|>\\n' -}}"
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
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- raise_exception('qwen3 template: unknown role ' ~ message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

# Shared by the two templates whose system message joins the first user message.
_SYSTEM_INTO_FIRST_USER = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_prefix = messages[0]['content'] | trim + '\\n\\n' -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system_prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
)


def _alternation_check(name: str) -> str:
    return (
        "{%- if message['role'] not in ['user', 'assistant'] -%}"
        f"{{{{- raise_exception('{name} template: only user and assistant turns (and a first system "
        "message), got ' ~ message['role']) -}}"
        "{%- elif (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        f"{{{{- raise_exception('{name} template: user and assistant turns must alternate, starting with "
        "user') -}}"
        "{%- endif -%}"
    )


MISTRAL = (
    "{{- bos_token -}}"
    + _SYSTEM_INTO_FIRST_USER
    + "{%- for message in turns -%}"
    + _alternation_check("mistral")
    + "{%- if message['role'] == 'user' -%}"
    "{{- '[INST]' + (system_prefix if loop.first else '') + message['content'] + '[/INST]' -}}"
    "{%- else -%}{{- message['content'] + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
)

GEMMA = (
    "{{- bos_token -}}"
    + _SYSTEM_INTO_FIRST_USER
    + "{%- for message in turns -%}"
    + _alternation_check("gemma")
    + "{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' -}}"
    "{{- (system_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "llama3": LLAMA3,
    "qwen3": QWEN3,
    "mistral": MISTRAL,
    "gemma": GEMMA,
}


TEMPLATE_CHOICES = ("tokenizer_default", "jinja")


def template_name_problem(name: str | None) -> str | None:
    """Why ``name`` is not a ``chat_template`` value ftk knows (with a "did you mean"), or None."""
    if name is None or name in TEMPLATE_CHOICES or name in BUILTIN_TEMPLATES:
        return None
    if "{%" in name or "{{" in name:
        return "holds template text; set chat_template: jinja and put the text in chat_template_jinja"

    return (
        f"unknown template {name!r}{suggest(name, [*TEMPLATE_CHOICES, *BUILTIN_TEMPLATES])}; choose "
        f"tokenizer_default, jinja or one of {', '.join(sorted(BUILTIN_TEMPLATES))}"
    )


def known_template_name(name: str | None) -> str | None:
    """``name`` unchanged when ftk knows it; a pydantic error (shown as a config error) otherwise."""
    problem = template_name_problem(name)
    if problem is not None:
        raise PydanticCustomError("chat_template", problem)
    return name


def resolve_chat_template(name: str | None, jinja: str | None, tokenizer: PreTrainedTokenizerBase) -> str:
    """The Jinja text for ``chat_template`` (+ ``chat_template_jinja``) with this tokenizer.

    ``None`` or ``tokenizer_default`` take the tokenizer's own template; a built-in name takes
    ours; ``jinja`` takes ``jinja`` as a file path when such a file exists, else as template text.
    """
    if name in (None, "tokenizer_default"):
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise FtkError(
                "chat_template: the tokenizer has no chat template; set chat_template to one of "
                f"{', '.join(sorted(BUILTIN_TEMPLATES))} or 'jinja'"
            )
        return template if isinstance(template, str) else template["default"]
    if name == "jinja":
        if not jinja:
            raise FtkError("chat_template_jinja: required when chat_template is 'jinja'")
        path = Path(jinja)
        return path.read_text(encoding="utf-8") if "{" not in jinja and path.is_file() else jinja
    if name in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name]
    raise FtkError(f"chat_template: {template_name_problem(name)}")
