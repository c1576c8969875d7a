"""Shell completion: the generated script is valid bash and completes commands and their options."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ftk.cli import main

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def complete(script: str, *words: str) -> list[str]:
    line = " ".join(words)
    code = (
        f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _ftk_complete; echo "${{COMPREPLY[@]}}"'
    )
    return subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True).stdout.split()


def test_bash_completion_of_commands_and_options(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert complete(script, "ftk", "pre") == ["preprocess"]
    assert sorted(complete(script, "ftk", "")) == sorted(
        ["completion", "eval", "generate", "merge-lora", "plugins", "preprocess", "tiny-model", "train", "validate", "--help", "-h",
         "--verbose", "-v", "--version"]
    )  # fmt: skip
    assert complete(script, "ftk", "preprocess", "cfg.yaml", "--debug-n") == ["--debug-num-examples"]
    assert complete(script, "ftk", "tiny-model", "--fo") == ["--force"]  # a plugin's command


def test_zsh_script_loads_bash_completion(capsys):
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out.startswith("autoload -U +X bashcompinit && bashcompinit\n")
