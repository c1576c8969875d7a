"""The exclusive lock of a run or a cache entry: one holder, named to whoever finds it taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from ftk.core.locks import LockHeld, exclusive_lock, read_holder


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    lock = tmp_path / "run" / ".lock"
    with exclusive_lock(lock, "output_dir run"):
        holder = read_holder(lock)
        assert holder.pid == os.getpid() and holder.host == socket.gethostname()
        # A second open file description conflicts even within one process (flock semantics).
        with pytest.raises(LockHeld) as caught:
            with exclusive_lock(lock, "output_dir run"):
                pass
    message = str(caught.value)
    assert message.startswith(f"output_dir run is in use by process {os.getpid()} on {socket.gethostname()}")
    # Released: the next holder gets it, and the file no longer names the old one.
    assert read_holder(lock).pid is None
    with exclusive_lock(lock, "output_dir run"):
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / ".lock"
    script = textwrap.dedent(
        f"""
        import os, sys
        from ftk.core.locks import exclusive_lock
        with exclusive_lock({str(lock)!r}, "x"):
            print("held", flush=True)
            sys.stdin.readline()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"process {child.pid} "):
            with exclusive_lock(lock, "x"):
                pass
    finally:
        child.kill()
        child.wait()
    with exclusive_lock(lock, "x"):  # the kernel released it with the process
        assert read_holder(lock).pid == os.getpid()


def test_the_lock_file_follows_the_umask(tmp_path):
    previous = os.umask(0o002)
    try:
        with exclusive_lock(tmp_path / ".lock", "x"):
            pass
    finally:
        os.umask(previous)
    assert (tmp_path / ".lock").stat().st_mode & 0o777 == 0o664
