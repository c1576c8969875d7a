"""A run this machine cannot do stops before any data is prepared (the ``check_environment`` hook).

Each config below is valid but needs something this CPU machine lacks.  Its dataset exists (the
paths are checked first) but its one row is unusable, so an error about the data would mean the
data work started first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ftk.cli import main
from ftk.integrations import liger as liger_integration
from ftk.plugins import deepspeed as deepspeed_plugin

CASES = {
    "liger": (
        "liger_rope: true\n",
        "error: liger_rope: ",
        liger_integration.gpu_available(),
    ),
    "flash-attention": (
        "attn_implementation: flash_attention_2\n",
        "error: attn_implementation: flash_attention_2 needs a CUDA GPU and this machine has none",
        torch.cuda.is_available(),
    ),
    "tf32": (
        "tf32: true\n",
        "error: tf32: TF32 needs an Ampere or newer NVIDIA GPU",
        torch.cuda.is_available(),
    ),
    "deepspeed": (
        "deepspeed: zero2\n",
        "error: deepspeed: "
        + (
            "DeepSpeed trains on CUDA GPUs and none is visible; remove deepspeed to train on the CPU"
            if deepspeed_plugin.deepspeed_installed()
            else "is set but DeepSpeed is not installed: pip install 'ftk[deepspeed]'"
        ),
        torch.cuda.is_available(),
    ),
    "fsdp": (
        "fsdp: {}\n",
        "error: fsdp: FSDP2 runs on CUDA GPUs and none is visible",
        torch.cuda.is_available(),
    ),
}


def bad_rows(directory: Path) -> Path:
    """A data file whose one row no strategy can use."""
    path = directory / "bad.jsonl"
    path.write_text('{"messages": 1}\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_machine_is_checked_before_the_data(tmp_path: Path, tiny_model_dir: Path, capsys, case: str):
    body, expected, machine_can = CASES[case]
    if machine_can:
        pytest.skip("this machine can run it")
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"base_model: {tiny_model_dir}\ndatasets:\n  - path: {bad_rows(tmp_path)}\n"
        f"adapter: lora\noutput_dir: {tmp_path / 'out'}\ndataset_prepared_path: {tmp_path / 'prepared'}\n"
        + body,
        encoding="utf-8",
    )
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert expected.removeprefix("error: ") in errors[0]  # core checks name the config line first
    assert "bad.jsonl" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "prepared").exists()


@pytest.mark.skipif(liger_integration.gpu_available(), reason="checks the error without a GPU")
def test_every_command_checks_the_machine_for_what_it_does(tmp_path: Path, tiny_model_dir: Path, capsys):
    """One lifecycle: eval and generate load the model (with Liger's kernels), so they stop at once;
    preprocess loads none, so it goes on to the data; validate reports the problem as a note."""
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"base_model: {tiny_model_dir}\ndatasets:\n  - path: {bad_rows(tmp_path)}\n"
        f"val_set_size: 2\noutput_dir: {tmp_path / 'out'}\ndataset_prepared_path: {tmp_path / 'prepared'}\n"
        "liger_rope: true\n",
        encoding="utf-8",
    )
    machine = "error: liger_rope: Liger's kernels need a GPU"
    for argv in (["eval", str(path)], ["generate", str(path), "hello", "--base"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(machine) and "bad.jsonl" not in err, argv
    assert main(["preprocess", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "liger" not in err  # past the machine check, stopped by the data
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "valid" in out and "note: this machine cannot train it: liger_rope: Liger's kernels need a GPU" in out
    )
