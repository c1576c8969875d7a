"""How long ftk takes to start: the wall time of quick commands, and which heavy libraries they import.

    python bench/startup_time.py                 # 5 runs of each command
    python bench/startup_time.py --runs 9 --config examples/mixed.yaml

Each command runs as a fresh process (``python -m ftk.cli ...``), as a person would run it; the
table shows the median and the fastest wall time of the runs, and, from one more run that calls
``ftk.cli.main`` in a fresh interpreter and then looks at ``sys.modules``, which of torch,
transformers, peft, datasets and accelerate the command imported.  ``ftk --help`` and ``ftk
validate`` import none of them: the commands' modules are imported only for the command that
runs, and plugins import those libraries inside the functions that need them.  Run it on a quiet
machine: other processes on the same cores add their time to every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "datasets", "accelerate")
PROBE = """
import contextlib, io, json, sys
from ftk.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:  # --help exits through argparse
        code = exc.code
print(json.dumps({"code": code, "imported": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def commands(config: str) -> list[list[str]]:
    """The commands timed: help, validate, and the other commands that need no model."""
    return [["--help"], ["validate", config], ["plugins"], ["completion", "bash"], ["train", "--help"]]


def wall_times(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Seconds each of ``runs`` fresh ``python ARGV`` processes took (output discarded)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        times.append(time.perf_counter() - started)
    return times


def imported(args: list[str], env: dict[str, str]) -> dict:
    """The exit code of ``args`` and the heavy libraries in ``sys.modules`` after it ran."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    return json.loads(probe.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--config", default="examples/quickstart.yaml", help="config for validate")
    options = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    python_start = statistics.median(wall_times(["-c", "pass"], options.runs, env))
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; bare interpreter start {python_start:.2f} s"
    )
    print(f"{'command':<40} {'median s':>9} {'min s':>7}  exit  heavy modules imported")
    for args in commands(options.config):
        wall_times(["-m", "ftk.cli", *args], 1, env)  # warm the file cache
        times = wall_times(["-m", "ftk.cli", *args], options.runs, env)
        probe = imported(args, env)
        name = "ftk " + " ".join(args)
        print(
            f"{name:<40} {statistics.median(times):>9.2f} {min(times):>7.2f}  {probe['code']!s:>4}  "
            f"{', '.join(probe['imported']) or 'none'}"
        )


if __name__ == "__main__":
    main()
