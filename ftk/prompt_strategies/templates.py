"""Chat templates that ship with ftk, and the choice between them and the tokenizer's own."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ftk.core.errors import FtkError

CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

BUILTIN_TEMPLATES: dict[str, str] = {"chatml": CHATML}


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
    raise FtkError(
        f"chat_template: unknown template {name!r}; choose tokenizer_default, jinja or one of "
        f"{', '.join(sorted(BUILTIN_TEMPLATES))}"
    )
