"""Checking a config is safe: ``ftk validate`` and ``ftk plugins CONFIG`` run none of the code it names.

A dataset's ``type: pkg.module.function`` and the ``plugins:`` modules are checked from their
source (found without importing any package, parsed with ``ast``); ``--import`` imports them as
``ftk train`` does.  A YAML alias bomb or a deeply nested config is one error line, at once.  The
multi-process launcher keeps the working directory off the processes' ``sys.path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ftk.cli import main
from ftk.commands.train import launcher_command
from ftk.core.config.source import MAX_VALUES
from tests.helpers import first_chat_rows, line_of, write_config

#: A package whose __init__ and module both leave a marker file when they run, and say so.
PACKAGE_INIT = "from pathlib import Path\nPath({marker!r}).joinpath('package').write_text('ran')\n"
STRATEGY = """\
from pathlib import Path

from pydantic import BaseModel

Path({marker!r}).joinpath("module").write_text("ran")
CONSTANT = 3


class Options(BaseModel):
    field: str = "text"


def build(dataset, tokenizer, cfg):
    return lambda row: {{"input_ids": [1], "labels": [1]}}


build.options_model = Options


def plain(dataset, tokenizer, cfg):
    return lambda row: {{"input_ids": [1], "labels": [1]}}


def one_row(row):
    return row


def two_args(a, b):
    return a
"""
PLUGIN = """\
from pathlib import Path

from pydantic import BaseModel

from ftk.core.hookspecs import hookimpl

__version__ = "0.7"
Path({marker!r}).joinpath("plugin").write_text("ran")


class Section(BaseModel):
    model_config = {{"extra": "forbid"}}
    level: int = 1


@hookimpl
def register_config_sections(register):
    register("marker_section", Section)


@hookimpl(trylast=True)
def trainer_callbacks(cfg):
    return []


def helper():
    return None
"""


@pytest.fixture
def code(tmp_path, monkeypatch):
    """A folder on sys.path with ``mkpkg`` (a strategy module in a package) and ``mkplugin``, each
    writing a marker file under ``ran/`` when it runs; names are unique to this test."""
    suffix = tmp_path.name.replace("-", "_").replace(".", "_")
    root = tmp_path / "code"
    markers = tmp_path / "ran"
    markers.mkdir()
    names = {"pkg": f"mkpkg_{suffix}", "plugin": f"mkplugin_{suffix}"}
    package = root / names["pkg"]
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PACKAGE_INIT.format(marker=str(markers)))
    (package / "strat.py").write_text(STRATEGY.format(marker=str(markers)))
    (root / f"{names['plugin']}.py").write_text(PLUGIN.format(marker=str(markers)))
    monkeypatch.syspath_prepend(str(root))
    yield types.SimpleNamespace(markers=markers, root=root, **names)
    for name in list(sys.modules):
        if name.startswith((names["pkg"], names["plugin"])):
            del sys.modules[name]


@pytest.fixture
def chat(tmp_path) -> Path:
    return first_chat_rows(tmp_path / "chat.jsonl", 4)


def ran(code) -> list[str]:
    return sorted(path.name for path in code.markers.iterdir())


def loaded(code) -> list[str]:
    return sorted(name for name in sys.modules if name.startswith((code.pkg, code.plugin)))


def config(tmp_path, tiny_model_dir, chat, type_name: str, **keys) -> Path:
    dataset = {"path": str(chat), "type": type_name, **keys.pop("dataset", {})}
    return write_config(tmp_path, tiny_model_dir, [dataset], **keys)


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


# --- the config's code is not run -----------------------------------------------------------------


def test_validate_runs_no_strategy_module_nor_its_package(tmp_path, tiny_model_dir, chat, code, capsys):
    path = config(tmp_path, tiny_model_dir, chat, f"{code.pkg}.strat.build", dataset={"field": "body"})
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert ran(code) == [] and loaded(code) == []
    assert out.startswith(f"{path}: valid\n")
    # What only the code could tell is a note, not a silent pass: its options model.
    assert (
        f"note: {path}:{line_of(path, 'type')}: datasets[0].type: options field of {code.pkg}.strat.build "
        "not checked (ftk validate runs none of the config's code; --import checks them)"
    ) in out

    assert main(["validate", str(path), "--import"]) == 0
    assert ran(code) == ["module", "package"]
    assert loaded(code) == [code.pkg, f"{code.pkg}.strat"]
    assert "note:" not in capsys.readouterr().out


def test_validate_runs_no_config_plugin_and_notes_its_keys(tmp_path, tiny_model_dir, chat, code, capsys):
    path = config(
        tmp_path, tiny_model_dir, chat, "chat_template", plugins=[code.plugin], marker_section={"levle": 2}
    )
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert ran(code) == [] and loaded(code) == []
    assert (
        f"note: {path}:{line_of(path, 'marker_section')}: marker_section: unknown key; not checked: one of "
        f"the config's plugins may add it (not imported: {code.plugin}; --import checks it)"
    ) in out
    assert "marker_section:\n  levle: 2\n" in out  # printed with the resolved config, as written

    # --import runs the plugin, whose section then catches the misspelt key.
    assert main(["validate", str(path), "--import"]) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {path}:{line_of(path, 'levle')}: marker_section.levle: unknown key (did you mean 'level'?)"
    ]
    assert ran(code) == ["plugin"]


def test_ftk_plugins_lists_a_config_plugin_from_its_source(
    tmp_path, tiny_model_dir, chat, code, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")
    path = config(tmp_path, tiny_model_dir, chat, "chat_template", plugins=[code.plugin])
    assert main(["plugins", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    (start,) = [number for number, line in enumerate(lines) if f" {code.plugin} " in line]
    # The row and the lines its cells wrap onto (first cell empty) when the table is narrow.
    rows = [lines[start]]
    for line in lines[start + 1 :]:
        parts = line.split("│")
        if len(parts) < 3 or parts[1].strip():
            break
        rows.append(line)
    columns = zip(*[[cell.strip() for cell in line.split("│")[1:-1]] for line in rows], strict=True)
    cells = [" ".join(part for part in column if part) for column in columns]
    assert cells == [
        code.plugin,
        "config, not imported",
        "0.7",
        "register_config_sections, trainer_callbacks",
    ]
    assert ran(code) == [] and loaded(code) == []

    assert main(["plugins", str(path), "--import"]) == 0
    assert "config, not imported" not in capsys.readouterr().out
    assert ran(code) == ["plugin"]


def test_validate_does_not_print_the_zen_of_python(tmp_path, tiny_model_dir, chat, monkeypatch, capsys):
    """``type: this.s``: the module ``this`` prints the Zen of Python when it is imported."""
    monkeypatch.delitem(sys.modules, "this", raising=False)
    path = config(tmp_path, tiny_model_dir, chat, "this.s")
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "Zen of Python" not in out + err and "this" not in sys.modules
    assert errors(err)[0].startswith(
        f"error: {path}:{line_of(path, 'type')}: datasets[0].type: this.s is str "
    )
    assert errors(err)[0].endswith(", not a function")


# --- the same problems are found from the source --------------------------------------------------


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("buidl", "module '{pkg}.strat' has no attribute 'buidl' (did you mean 'build'?)"),
        (
            "one_row",
            "{pkg}.strat.one_row takes (row) but ftk calls it as one_row(dataset, tokenizer, cfg), once, "
            "to get the function that turns a row into input_ids and labels; a function of one row goes "
            "inside: write build(dataset, tokenizer, cfg) that returns it",
        ),
        (
            "two_args",
            "{pkg}.strat.two_args takes (a, b) but ftk calls it as two_args(dataset, tokenizer, cfg)",
        ),
        ("CONSTANT", "{pkg}.strat.CONSTANT is int 3, not a function"),
    ],
    ids=["missing-function", "row-function", "wrong-signature", "not-callable"],
)
def test_a_bad_function_is_the_same_error_without_importing(
    tmp_path, tiny_model_dir, chat, code, capsys, function, message
):
    path = config(tmp_path, tiny_model_dir, chat, f"{code.pkg}.strat.{function}")
    expected = f"error: {path}:{line_of(path, 'type')}: datasets[0].type: {message.format(pkg=code.pkg)}"
    assert main(["validate", str(path)]) == 2
    static = errors(capsys.readouterr().err)
    assert ran(code) == [] and static[0].startswith(expected)
    assert main(["validate", str(path), "--import"]) == 2
    assert errors(capsys.readouterr().err) == static  # word for word what importing finds


def test_a_missing_module_is_named_without_importing_its_package(
    tmp_path, tiny_model_dir, chat, code, capsys
):
    path = config(tmp_path, tiny_model_dir, chat, f"{code.pkg}.stratt.build")
    assert main(["validate", str(path)]) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {path}:{line_of(path, 'type')}: datasets[0].type: no module named "
        f"'{code.pkg}.stratt' (strategy '{code.pkg}.stratt.build')"
    ]
    assert ran(code) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "import pathlib\nimport no_such_dependency_xyz\n",
            "ModuleNotFoundError: No module named 'no_such_dependency_xyz' (at {file}:2)",
        ),
        ("def build(:\n    pass\n", "SyntaxError: invalid syntax (at {file}:1)"),
        ("raise RuntimeError('needs a GPU')\n", "it raises RuntimeError('needs a GPU') (at {file}:1)"),
    ],
    ids=["missing-dependency", "syntax-error", "raises"],
)
def test_a_module_that_cannot_import_is_found_from_its_source(
    tmp_path, tiny_model_dir, chat, code, capsys, source, expected
):
    module = code.root / f"{code.plugin}_broken.py"
    module.write_text(source)
    name = module.stem
    path = config(tmp_path, tiny_model_dir, chat, f"{name}.build")
    assert main(["validate", str(path)]) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {path}:{line_of(path, 'type')}: datasets[0].type: importing '{name}' would fail: "
        + expected.format(file=module)
    ]
    plugin = config(tmp_path, tiny_model_dir, chat, "chat_template", plugins=[name])
    assert main(["validate", str(plugin)]) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {plugin}:{line_of(plugin, 'plugins') + 1}: plugins[0]: plugin '{name}' (config, module '{name}') "
        "would fail to import: " + expected.format(file=module)
    ]
    assert name not in sys.modules


def test_a_missing_plugin_module_is_an_error(tmp_path, tiny_model_dir, chat, code, capsys):
    path = config(tmp_path, tiny_model_dir, chat, "chat_template", plugins=[f"{code.pkg}.no_plugin"])
    assert main(["validate", str(path)]) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: {path}:{line_of(path, 'plugins') + 1}: plugins[0]: plugin '{code.pkg}.no_plugin' (config, module "
        f"'{code.pkg}.no_plugin') failed to import: no module named '{code.pkg}.no_plugin' (is the package "
        "installed in this Python?)"
    ]
    assert ran(code) == []


# --- YAML that would exhaust memory or the stack --------------------------------------------------


def test_an_alias_bomb_is_one_error_at_once(tmp_path, capsys):
    """Nine levels of nine aliases: 387 million values from 400 bytes (7.5 GB and 86 s before)."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 9)]
    path = tmp_path / "cfg.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert main(["validate", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {path}:")
    assert line.endswith(
        f": too many values: more than {MAX_VALUES:,} once aliases (*name) are expanded; "
        "a config is far smaller (are aliases nested in aliases?)"
    )


def test_aliases_a_real_config_uses_still_work(tmp_path, tiny_model_dir, chat, capsys):
    extra = "lora_target_modules: &targets [q_proj, v_proj]\nlora_modules_to_save: *targets\n"
    path = write_config(tmp_path, tiny_model_dir, chat, extra=extra, adapter="lora", lora_r=4)
    assert main(["validate", str(path)]) == 0
    assert "lora_modules_to_save:\n- q_proj\n- v_proj\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    "nesting", ["[" * 10_000 + "]" * 10_000, "{a: " * 10_000 + "1" + "}" * 10_000], ids=["lists", "mappings"]
)
def test_deep_nesting_is_one_error_without_a_traceback(tmp_path, capsys, nesting):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"base_model: m\nseed: {nesting}\n")
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}:2: invalid YAML: nested more than 100 levels deep\n"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "!!python/name:os.system x",
            "invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:os.system'",
        ),
        (
            '!!python/object/apply:os.system ["echo hi"]',
            "unsupported YAML tag tag:yaml.org,2002:python/object/apply:os.system",
        ),
        ("{? [1, 2] : 3}", "keys must be strings, got a list"),
    ],
    ids=["python-name", "python-apply-on-a-list", "list-as-key"],
)
def test_python_tags_and_odd_keys_are_one_error(tmp_path, capsys, value, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"base_model: m\nseed: {value}\n")
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}:2: {message}\n"


# --- the launcher keeps the working directory off sys.path ----------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P is new in 3.11")
def test_the_launcher_and_its_processes_leave_the_working_directory_off_sys_path(tmp_path, monkeypatch):
    # The launcher: python -P.
    assert launcher_command(2, ["train", "cfg.yaml"])[:4] == [sys.executable, "-P", "-m", "ftk.core.launch"]

    # It hands PYTHONSAFEPATH to the processes torch.distributed.run starts (stubbed: no torch here).
    from ftk.core import launch

    seen: dict[str, str | None] = {}
    stubs = {
        "torch.distributed.run": {
            "parse_args": lambda argv: argv,
            "run": lambda args: seen.update(safe=os.environ.get("PYTHONSAFEPATH")),
        },
        "torch.distributed.elastic.multiprocessing.api": {"SignalException": type("S", (Exception,), {})},
        "torch.distributed.elastic.multiprocessing.errors": {"ChildFailedError": type("C", (Exception,), {})},
    }
    for name, attributes in stubs.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attributes))
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    monkeypatch.setattr(sys, "flags", types.SimpleNamespace(safe_path=True))
    assert launch.run_launcher(["--standalone"]) == 0
    monkeypatch.undo()
    assert seen == {"safe": "1"}

    # Each process runs `python -u -m ftk.cli` with it: a module in the working directory that
    # shadows one ftk imports (argparse) is not imported.
    (tmp_path / "argparse.py").write_text("raise SystemExit('the shadow argparse.py ran')\n")
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    worker = subprocess.run(
        [sys.executable, "-u", "-m", "ftk.cli", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert (worker.returncode, worker.stdout.strip()) == (0, "ftk 0.1.0"), worker.stderr
