"""The first run as a new user sees it, output piped or logged: quick start-up, the mask readable
without colour, no third-party noise, progress lines for long steps, and the commands taking
their arguments in any order.

Commands run in a fresh ``python -m ftk.cli`` process with stdout and stderr captured, as in a CI
log (neither is a terminal).  Where a test reads only what a command prints (not the libraries'
start-up noise nor what a fresh process imports), the command runs in-process through
``ftk.cli.main`` with pytest capturing stdout and stderr (not terminals either), which spares the
start-up of a process that imports torch; and where no token id is read, on the small-vocabulary
tiny model, whose tokenizer loads faster.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ftk.cli import main
from tests.helpers import SMALL_LORA, first_chat_rows, write_config

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "datasets", "accelerate")
#: Lines third-party libraries print that ftk keeps out of a run's output (without --verbose).
NOISE = (
    "kernels-community",  # bitsandbytes on CPU, imported by peft: "Failed to load CPU gemm_4bit_forward ..."
    "publisher trust check",  # kernels: "Skipping publisher trust check for 'kernels-community/...'"
    "is_gradient_checkpointing",  # transformers' FutureWarning, read by peft < 0.22
    "Loading weights",  # transformers' tqdm bar
    "Writing model shards",
    "\r",  # any bar redrawn in place
)

USER = "What is the capital of France?"
ASSISTANT = "The capital of France is Paris."


def ftk(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m ftk.cli ARGS`` from the repository root, stdout and stderr captured (pipes).

    The output is decoded by hand: text mode would turn the carriage returns of a redrawn bar
    into newlines.
    """
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    environment.pop("FTK_PROGRESS_INTERVAL", None)
    environment.update(env or {})
    run = subprocess.run(
        [sys.executable, "-m", "ftk.cli", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(run.args, run.returncode, run.stdout.decode(), run.stderr.decode())


def noise_in(text: str) -> list[str]:
    return [pattern for pattern in NOISE if pattern in text]


# --- start-up -------------------------------------------------------------------------------------

PROBE = """
import contextlib, io, json, sys
from ftk.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "imported": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def imported_by(*args: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_help_and_validate_import_none_of_the_heavy_libraries(tmp_path, tiny_model_dir):
    """`ftk --help` and `ftk validate` start in well under 1.5 s because they import no torch & co."""
    config = write_config(tmp_path, tiny_model_dir, first_chat_rows(tmp_path / "chat.jsonl", 4), **SMALL_LORA)

    assert imported_by("--help") == {"code": 0, "imported": []}
    assert imported_by("validate", str(config)) == {"code": 0, "imported": []}


def test_the_import_free_callback_base_answers_every_event_transformers_calls():
    from transformers import TrainerCallback as TransformersCallback
    from transformers.trainer_callback import CallbackHandler

    from ftk.core.callbacks import TrainerCallback

    events = {name for name in dir(TransformersCallback) if name.startswith("on_")}
    assert events <= set(vars(TrainerCallback))
    assert TrainerCallback().on_an_event_of_a_later_release(None, None, None, model=None) is None

    class Counter(TrainerCallback):
        seen: list[str] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.seen.append("step_end")

    handler = CallbackHandler([Counter()], None, None, None, None)
    for event in sorted(events):  # Trainer's dispatch: getattr(callback, event)(args, state, control, ...)
        handler.call_event(event, None, None, None, metrics={}, logs={})
    assert Counter.seen == ["step_end"]


def test_every_command_still_has_its_arguments_when_run(tmp_path, tiny_model_dir, capsys):
    """Only the command that runs declares its arguments; each still parses its own options."""
    config = write_config(tmp_path, tiny_model_dir, first_chat_rows(tmp_path / "chat.jsonl", 4))
    run = ftk("validate", str(config), "--micro_batch_size", "3")
    assert run.returncode == 0, run.stderr
    assert "micro_batch_size: 3" in run.stdout
    # completion reads every command's arguments (importing torch & co.): in-process, where they are loaded.
    assert main(["completion", "bash"]) == 0
    completion = capsys.readouterr().out
    assert "--max-new-tokens" in completion and "--debug-num-examples" in completion


# --- preprocess --debug without colour ------------------------------------------------------------


def one_dialogue_config(tmp_path: Path, model_dir: Path) -> Path:
    """A config on one dialogue in a file whose name is long enough to widen the stats table."""
    data = tmp_path / "a_data_file_with_a_long_enough_name_to_widen_the_table.jsonl"
    messages = [{"role": "user", "content": USER}, {"role": "assistant", "content": ASSISTANT}]
    data.write_text(json.dumps({"messages": messages}) + "\n")
    return write_config(tmp_path, model_dir, data)


@pytest.fixture
def one_dialogue(tmp_path, tiny_model_dir) -> Path:
    return one_dialogue_config(tmp_path, tiny_model_dir)


@pytest.fixture
def one_dialogue_small_vocab(tmp_path, small_vocab_model_dir) -> Path:
    return one_dialogue_config(tmp_path, small_vocab_model_dir)


def test_debug_marks_the_trained_tokens_in_the_text_when_piped(one_dialogue_small_vocab, capsys):
    args = ["preprocess", str(one_dialogue_small_vocab), "--debug", "--debug-num-examples", "1"]
    assert main([*args, "--debug-text-only"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # no colour codes in a pipe
    assert "legend: «trained»  not trained" in out
    trained = re.findall(r"«(.*?)»", out.split("row 0:", 1)[1], flags=re.S)
    # Exactly the assistant reply and the end of its turn are trained; the user's text is not.
    assert trained == [ASSISTANT + "<|im_end|>"]
    assert f"<|im_start|>user\n{USER}<|im_end|>\n<|im_start|>assistant\n«{ASSISTANT}<|im_end|>»\n" in out


def test_debug_with_token_ids_marks_each_trained_run(one_dialogue):
    run = ftk("preprocess", str(one_dialogue), "--debug", "--debug-num-examples", "1")
    assert run.returncode == 0, run.stderr
    row = run.stdout.split("row 0:", 1)[1]
    (trained,) = re.findall(r"«(.*?)»", row, flags=re.S)
    assert trained.startswith("The[") and trained.endswith("<|im_end|>[151645]")
    assert "France[" in trained and "capital[" in trained and "What[" not in trained
    assert "\n" not in row.strip().split("\n", 1)[1]  # one row, one line: not wrapped at 80 columns


def test_stats_table_is_not_cut_at_80_columns_when_piped(one_dialogue_small_vocab, capsys):
    assert main(["preprocess", str(one_dialogue_small_vocab)]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    header = next(line for line in out.splitlines() if "source" in line)
    for column in ("rows", "kept", "invalid", "too long", "truncated", "nothing trained", "trained tokens"):
        assert f" {column} " in header, column
    assert "a_data_file_with_a_long_enough_name_to_widen_the_table.jsonl (train)" in out
    assert len(header) > 80


# --- progress of long steps in a log -------------------------------------------------------------

TQDM_DEMO = """
import sys, time
from tqdm import tqdm
from ftk.cli import quiet_third_party
quiet_third_party(verbose="-v" in sys.argv)
for _ in tqdm(range(3), desc="Loading demo", unit="shards"):
    time.sleep(0.05)
for _ in tqdm(range(2), desc="Quick demo"):
    pass
"""


def tqdm_demo(*args: str, interval: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FTK_PROGRESS_INTERVAL": interval}
    run = subprocess.run(
        [sys.executable, "-c", TQDM_DEMO, *args], capture_output=True, env=env, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    return run.stderr.decode()  # as bytes: text mode would turn carriage returns into newlines


def test_tqdm_bars_in_a_log_become_lines_and_quick_ones_stay_silent():
    output = tqdm_demo(interval="0.04")
    assert "\r" not in output
    lines = [line for line in output.splitlines() if line.startswith("Loading demo: ")]
    assert re.fullmatch(r"Loading demo: 3/3 shards \(100%\) \[\d+s\]", lines[-1])
    assert tqdm_demo(interval="60") == ""  # nothing runs for a minute: nothing printed
    assert "\r" in tqdm_demo("-v", interval="60")  # --verbose: the libraries' own bars


def test_preprocess_prints_tokenizing_progress_lines_in_a_log(tmp_path, small_vocab_model_dir):
    config = write_config(tmp_path, small_vocab_model_dir, first_chat_rows(tmp_path / "chat.jsonl", 40))
    run = ftk("preprocess", str(config), env={"FTK_PROGRESS_INTERVAL": "0"})
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stderr
    assert re.search(r"^\S.*: 40/40 examples \(100%\)", run.stderr, flags=re.M), run.stderr


@pytest.mark.slow
def test_tiny_model_build_reports_its_stages_and_warm_up_in_a_log(tmp_path):
    run = ftk("tiny-model", str(tmp_path / "tiny"), "--warmup-steps", "2", env={"FTK_PROGRESS_INTERVAL": "0"})
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines[:3] == [
        "tiny-model: building the tokenizer (Qwen BPE)",
        "tiny-model: creating the model (hidden size 64, 2 layers)",
        "tiny-model: warming up the embeddings and norms (2 steps)",
    ]
    assert re.fullmatch(r"tiny-model warm-up: 1/2 steps \(50%\), loss \d+\.\d{3}", lines[3])
    assert re.fullmatch(r"tiny-model warm-up: 2/2 steps \(100%\), loss \d+\.\d{3} in \d+\.\ds", lines[4])
    assert lines[-1] == f"tiny-model: saving to {tmp_path / 'tiny'}"
    assert f"tiny model written to {tmp_path / 'tiny'}" in run.stdout


# --- a training run's output --------------------------------------------------------------------


def test_generate_takes_the_prompt_after_the_options_and_verbose_shows_the_libraries_bars(
    tmp_path, small_vocab_model_dir, capsys
):
    config = write_config(tmp_path, small_vocab_model_dir, first_chat_rows(tmp_path / "chat.jsonl", 2))
    args = ("generate", str(config), "--model", str(small_vocab_model_dir), "--max-new-tokens", "2")
    quiet = ftk(*args, "Book a table for two", "--seed", "1")
    assert quiet.returncode == 0, quiet.stderr
    assert noise_in(quiet.stderr) == []
    verbose = ftk(*args, "--verbose", "Book a table for two")
    assert verbose.returncode == 0, verbose.stderr
    assert "Loading weights" in verbose.stderr  # --verbose: transformers' own bar, as it draws it
    assert quiet.stdout == verbose.stdout  # greedy: the same reply

    # In-process: the error is ftk's own output (the eval test below checks an error in a fresh process).
    capsys.readouterr()
    assert main([*args, "Book a table", "for two"]) == 2
    assert (
        capsys.readouterr().err
        == "error: PROMPT: 2 prompts given ('Book a table', 'for two'); quote the prompt as one argument\n"
    )


def test_eval_takes_model_like_generate(tmp_path, small_vocab_model_dir):
    config = write_config(
        tmp_path, small_vocab_model_dir, first_chat_rows(tmp_path / "chat.jsonl", 6), val_set_size=2
    )
    by_model = ftk("eval", str(config), "--model", str(small_vocab_model_dir), "--json")
    assert by_model.returncode == 0, by_model.stderr
    assert f"eval: 2 rows; full {small_vocab_model_dir}; device " in by_model.stderr
    assert set(json.loads(by_model.stdout)) == {"eval_loss", "eval_perplexity", "eval_tokens"}
    missing = ftk("eval", str(config), "--model", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr == f"error: --model: {tmp_path / 'nope'} is not a directory\n"


# --- the bundled examples -------------------------------------------------------------------------


def warnings_in(stderr: str) -> list[str]:
    """Lines of advice or warning: the advisor's, ftk's notes, Python warnings."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith(("advisor:", "note:", "warning:")) or "Warning" in line
    ]


def train_example(
    example: str, tmp_path: Path, model_dir: Path, *overrides: str
) -> subprocess.CompletedProcess:
    """Two steps of a bundled example on the tiny model, its outputs under ``tmp_path``."""
    return ftk(
        "train",
        f"examples/{example}",
        "--base_model", str(model_dir),
        "--max_steps", "2",
        "--warmup_steps", "1",  # shorter than the shortened run
        "--output_dir", str(tmp_path / "out"),
        "--dataset_prepared_path", str(tmp_path / "prepared"),
        *overrides,
    )  # fmt: skip


@pytest.mark.slow
def test_quickstart_is_quiet_and_eval_json_uses_the_metrics_names(tmp_path, tiny_model_dir):
    """The quickstart with gradient checkpointing on: LoRA (peft imports bitsandbytes), and a plugin
    reading the deprecated property as peft < 0.22 did.  No warning, no library noise; then
    ``ftk eval --json`` gives the numbers under the names metrics.jsonl uses.

    The eval set is cut from 30 rows (5%) to 8: it is evaluated twice, at step 2 and by ``ftk eval``.
    """
    run = train_example(
        "quickstart.yaml",
        tmp_path,
        tiny_model_dir,
        "--eval_steps", "2",
        "--val_set_size", "8",
        "--gradient_checkpointing", "true",
        "--plugins", "[tests.fixture_plugins.deprecated_read]",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert warnings_in(run.stderr) == []
    assert noise_in(run.stdout + run.stderr) == []
    assert f"model: loading {tiny_model_dir}\n" in run.stderr

    entries = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    logged = next(entry for entry in entries if "eval_loss" in entry)
    evaluated = ftk(
        "eval", "examples/quickstart.yaml", "--base_model", str(tiny_model_dir),
        "--val_set_size", "8", "--dataset_prepared_path", str(tmp_path / "prepared"),
        "--adapter", str(tmp_path / "out"), "--json",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert set(result) == {"eval_loss", "eval_perplexity", "eval_tokens"} <= set(logged)
    assert result["eval_tokens"] == logged["eval_tokens"]
    assert result["eval_loss"] == pytest.approx(logged["eval_loss"], abs=1e-4)
    assert noise_in(evaluated.stderr) == []


@pytest.mark.slow
def test_mixed_example_trains_without_a_warning(tmp_path, tiny_model_dir):
    run = train_example("mixed.yaml", tmp_path, tiny_model_dir)
    assert run.returncode == 0, run.stderr
    assert warnings_in(run.stderr) == []
    assert noise_in(run.stdout + run.stderr) == []
