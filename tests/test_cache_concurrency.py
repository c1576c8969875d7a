"""The tokenized-data cache under concurrency: entries written once, never clobbered, nothing left behind.

Several processes are started at once on one ``dataset_prepared_path`` (forked from this one, so
that they start in a fraction of a second), as several ``ftk train``/``ftk preprocess`` would.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import socket
import stat
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import datasets
import pytest

from ftk.core.config.loader import load_config
from ftk.core.data import cache
from ftk.core.data.pipeline import PreparedData, prepare_data
from ftk.core.errors import FtkError
from ftk.core.locks import LockHeld, exclusive_lock
from tests.helpers import first_chat_rows, write_config

FORK = multiprocessing.get_context("fork")
# Data preparation only, with an eval split: rows of up to 256 tokens, no training keys.
BASE = dict(sequence_len=256, val_set_size=0.2, micro_batch_size=None, max_steps=None)


def rows_digest(data: PreparedData) -> str:
    """One digest of the train and eval rows (ids and labels, in order)."""
    digest = hashlib.sha256()
    for split in (data.train, data.eval):
        rows = split.select_columns(["input_ids", "labels"]).to_dict() if split is not None else None
        digest.update(json.dumps(rows).encode())
    return digest.hexdigest()


def prepare(cfg_path: Path, tokenizer: Any, use_cache: bool = True) -> PreparedData:
    cfg, manager = load_config(cfg_path)
    return prepare_data(cfg, tokenizer, manager.collect_registrations(), use_cache=use_cache)


def _slowly(rename: Any) -> Any:
    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)
        return rename(*args, **kwargs)

    return slow


def _child(cfg_path: Path, tokenizer: Any, use_cache: bool, rounds: int, start: Any, results: Any) -> None:
    """Prepare the data ``rounds`` times once ``start`` is set; put ("ok", [(from_cache, digest)]) or the error.

    A writer (``use_cache`` False) renames slowly: between setting the old entry aside and putting
    the new one in its place, readers have time to look.
    """
    if not use_cache:
        os.rename, os.replace = _slowly(os.rename), _slowly(os.replace)
    start.wait()
    try:
        seen = []
        for _ in range(rounds):
            data = prepare(cfg_path, tokenizer, use_cache)
            seen.append((data.from_cache, rows_digest(data)))
        results.put(("ok", seen))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def run_at_once(cfg_path: Path, tokenizer: Any, plan: list[tuple[bool, int]]) -> list[list[tuple[bool, str]]]:
    """Start one process per (use_cache, rounds) of ``plan`` at the same moment; each one's results, by round."""
    start, results = FORK.Event(), FORK.Queue()
    processes = [
        FORK.Process(target=_child, args=(cfg_path, tokenizer, use_cache, rounds, start, results))
        for use_cache, rounds in plan
    ]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in processes]  # in the order they finished
    for process in processes:
        process.join(timeout=30)
    errors = [detail for status, detail in outcomes if status != "ok"]
    assert not errors, errors[0]
    assert [process.exitcode for process in processes] == [0] * len(processes)
    return [seen for _, seen in outcomes]


def leftovers(root: Path) -> list[str]:
    """Everything under ``root`` but complete entries' contents: entry names, lock files, anything else."""
    found = []
    for item in sorted(root.iterdir()):
        if item.name == ".locks":
            found += [f".locks/{lock.name}" for lock in sorted(item.iterdir())]
        else:
            found.append(item.name + ("" if (item / cache.META_FILE).is_file() else " (incomplete)"))
    return found


@pytest.fixture
def chat_cfg(tmp_path: Path, tiny_model_dir: Path) -> Path:
    data = first_chat_rows(tmp_path / "chat.jsonl", 60)
    return write_config(tmp_path, tiny_model_dir, data, **BASE)


@pytest.fixture
def expected(tmp_path: Path, tiny_model_dir: Path, tokenizer: Any) -> str:
    """The rows one process alone prepares from the same data and settings (elsewhere)."""
    alone = tmp_path / "alone"
    alone.mkdir()
    data = first_chat_rows(alone / "chat.jsonl", 60)
    return rows_digest(prepare(write_config(alone, tiny_model_dir, data, **BASE), tokenizer))


def test_writers_started_at_once_build_one_entry_once(chat_cfg, tokenizer, expected, tmp_path):
    results = [seen for (seen,) in run_at_once(chat_cfg, tokenizer, [(True, 1)] * 5)]
    assert {digest for _, digest in results} == {expected}
    # One process tokenized; the others waited on its lock and reused its entry.
    assert sorted(from_cache for from_cache, _ in results) == [False, True, True, True, True]
    (key,) = [name for name in leftovers(tmp_path / "prepared") if not name.startswith(".")]
    assert leftovers(tmp_path / "prepared") == [".locks/" + key + ".lock", key]
    meta = json.loads((tmp_path / "prepared" / key / cache.META_FILE).read_text())
    assert meta["cache_dir"] == str(tmp_path / "prepared" / key)  # where it was published, not staged


def test_no_cache_writers_do_not_break_readers_of_the_entry(chat_cfg, tokenizer, expected, tmp_path):
    first = prepare(chat_cfg, tokenizer)
    # 3 writers tokenize again and replace the entry while 2 readers load it 6 times each.
    results = run_at_once(chat_cfg, tokenizer, [(False, 1)] * 3 + [(True, 6)] * 2)
    assert {digest for seen in results for _, digest in seen} == {expected}
    # A reader that finds the entry being replaced waits for the new one: it never tokenizes.
    assert sorted(tuple(from_cache for from_cache, _ in seen) for seen in results) == [
        (False,),
        (False,),
        (False,),
        (True,) * 6,
        (True,) * 6,
    ]
    key = first.cache_dir.name
    assert leftovers(tmp_path / "prepared") == [".locks/" + key + ".lock", key]


STALLING_STRATEGY = """
import os, time
from pathlib import Path


def build(dataset, tokenizer, cfg):
    def to_features(row):
        stall = Path(os.environ["FTK_TEST_STALL"])
        if stall.exists():  # a writer to kill: say so, then never finish
            (stall.parent / "started").write_text(str(os.getpid()))
            time.sleep(600)
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": ids, "labels": ids}

    return to_features
"""


def _stalled_writer(cfg_path: Path, tokenizer: Any) -> None:
    prepare(cfg_path, tokenizer)


def test_a_killed_writer_leaves_nothing_behind_once_the_key_is_written_again(
    tmp_path, tiny_model_dir, tokenizer, monkeypatch
):
    code = tmp_path / "code"
    code.mkdir()
    (code / "stalling_strategy.py").write_text(STALLING_STRATEGY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(code))
    hf_cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(hf_cache))
    stall = tmp_path / "stall"
    stall.write_text("")
    monkeypatch.setenv("FTK_TEST_STALL", str(stall))
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": f"note number {i}"}) + "\n" for i in range(50)))
    cfg = write_config(tmp_path, tiny_model_dir, [{"path": data, "type": "stalling_strategy.build"}], **BASE)

    writer = FORK.Process(target=_stalled_writer, args=(cfg, tokenizer))
    writer.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "started").exists(), "the writer never reached tokenization"
    os.kill(writer.pid, signal.SIGKILL)  # mid-tokenization: no cleanup code runs
    writer.join()
    prepared = tmp_path / "prepared"
    assert [p.name for p in prepared.iterdir() if ".tmp-" in p.name], "the killed writer's staging folder"

    stall.unlink()
    again = prepare(cfg, tokenizer)
    assert not again.from_cache and len(again.train) + len(again.eval) == 50
    key = again.cache_dir.name
    # The staging folder is gone, and with it everything datasets wrote while loading the source.
    assert leftovers(prepared) == [".locks/" + key + ".lock", key]
    assert not [p for p in hf_cache.rglob("*") if p.is_file()] if hf_cache.exists() else True


def test_a_folder_without_its_meta_file_is_set_aside_and_rebuilt(chat_cfg, tokenizer, expected, tmp_path):
    first = prepare(chat_cfg, tokenizer)
    (first.cache_dir / cache.META_FILE).unlink()  # as an interrupted older ftk could leave it
    (first.cache_dir / "train" / "state.json").write_text("{broken")
    again = prepare(chat_cfg, tokenizer)
    assert not again.from_cache and again.cache_dir == first.cache_dir
    assert rows_digest(again) == expected
    assert leftovers(tmp_path / "prepared") == [
        ".locks/" + first.cache_dir.name + ".lock",
        first.cache_dir.name,
    ]


def test_a_broken_entry_is_rebuilt_under_the_lock(chat_cfg, tokenizer, expected, tmp_path):
    first = prepare(chat_cfg, tokenizer)
    for arrow in (first.cache_dir / "train").glob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    again = prepare(chat_cfg, tokenizer)
    assert not again.from_cache and rows_digest(again) == expected


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_cache_file_and_folder_follows_the_umask(chat_cfg, tokenizer, tmp_path, umask):
    before = os.umask(umask)
    try:
        prepare(chat_cfg, tokenizer)
    finally:
        os.umask(before)
    root = tmp_path / "prepared"
    modes = {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in [root, *root.rglob("*")]
    }
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o777 if (root / name).is_dir() else 0o666) & ~umask
    }
    assert len(modes) >= 8 and any(name.startswith(".locks/") for name in modes)
    assert not wrong


def test_a_failed_first_run_leaves_no_cache_folder(tmp_path, tiny_model_dir, tokenizer):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": 3}]}) + "\n")
    with pytest.raises(FtkError, match=r"chat.jsonl:1: messages\[0\]\.content: must be text"):
        prepare(write_config(tmp_path, tiny_model_dir, data, **BASE), tokenizer)
    assert not (tmp_path / "prepared").exists()


def test_a_lock_file_removed_by_its_holder_is_never_held_twice(tmp_path):
    """A waiter that gets the lock of a file its holder removed takes the lock again, on the new file."""
    path = tmp_path / ".locks" / "k.lock"
    held, release = threading.Event(), threading.Event()

    def wait_then_hold() -> None:
        with cache.entry_lock(path, "k"):
            held.set()
            release.wait(timeout=10)

    with cache.entry_lock(path, "k"):
        waiter = threading.Thread(target=wait_then_hold)
        waiter.start()
        time.sleep(0.3)  # the waiter now blocks on the file about to be removed
        path.unlink()
    try:
        assert held.wait(timeout=10)
        with pytest.raises(LockHeld), exclusive_lock(path, "k", wait=False):
            pass  # the waiter holds the file now at ``path``: nobody else gets it
    finally:
        release.set()
        waiter.join(timeout=10)


def test_a_writer_that_waits_says_for_whom(tmp_path, capsys):
    path = tmp_path / ".locks" / "k.lock"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with cache.entry_lock(path, "data cache entry k"):
            held.set()
            release.wait(timeout=10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(timeout=10)
    threading.Timer(0.3, release.set).start()
    with cache.entry_lock(path, "data cache entry k"):
        pass
    holder.join(timeout=10)
    err = capsys.readouterr().err
    host = socket.gethostname()
    assert f"note: data cache entry k is being written by process {os.getpid()} on {host} (since " in err
    assert err.rstrip().endswith("; waiting for it")


def test_a_lock_folder_that_is_a_file_is_one_clear_error(tmp_path, tiny_model_dir, capsys):
    from ftk.cli import main

    cfg = write_config(tmp_path, tiny_model_dir, first_chat_rows(tmp_path / "chat.jsonl", 4), **BASE)
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / ".locks").write_text("not a folder")
    assert main(["preprocess", str(cfg)]) == 2
    err = capsys.readouterr().err
    locks = tmp_path / "prepared" / ".locks"
    assert f"error: dataset_prepared_path: cannot create or lock {locks}/" in err and "Traceback" not in err
    assert [p.name for p in (tmp_path / "prepared").iterdir()] == [".locks"]
