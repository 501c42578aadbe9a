"""nas.io: atomic writes, and the temporary files a killed writer leaves behind."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from nas.io import atomic_write_text, remove_stale_temps


@pytest.mark.skipif(os.name != "posix", reason="a writer's liveness is checked with POSIX kill(pid, 0)")
def test_the_next_write_removes_a_dead_writers_temporary_file_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a process that has exited
    host = socket.gethostname()
    stale = tmp_path / f".plan.json.{host}-{dead}.abc123.tmp"  # as a kill -9 before the rename leaves it
    live = tmp_path / f".plan.json.{host}-{os.getppid()}.def456.tmp"  # a writer still running
    other_host = tmp_path / f".plan.json.elsewhere-{dead}.ghi789.tmp"  # a shared folder: not ours to judge
    other_file = tmp_path / f".report.md.{host}-{dead}.jkl012.tmp"  # another file's: its own write clears it
    recent = tmp_path / f".plan.json.{host}-{dead}.mno345.tmp"  # too young to judge: kept this time
    hour_ago = time.time() - 3600
    for f in (stale, live, other_host, other_file, recent):
        f.write_text("half")
        if f is not recent:
            os.utime(f, (hour_ago, hour_ago))
    atomic_write_text(tmp_path / "plan.json", "{}")
    assert (tmp_path / "plan.json").read_text() == "{}"
    assert not stale.exists() and live.exists() and other_host.exists() and other_file.exists()
    kept = sorted(p.name for p in tmp_path.glob(".plan.json.*.tmp"))
    assert kept == sorted([live.name, other_host.name, recent.name])
    assert remove_stale_temps(tmp_path / "report.md") == [other_file]


@pytest.mark.skipif(os.name != "posix", reason="folders are fsynced on POSIX only")
def test_fsync_tree_flushes_every_file_and_folder(tmp_path, monkeypatch):
    import nas.io

    root = tmp_path / "checkpoint-4"
    (root / "sub").mkdir(parents=True)
    for rel in ("adapters.safetensors", "trainer_state.json", "sub/rng_state.pth"):
        (root / rel).write_bytes(b"x")
    synced = []
    real = os.fsync
    monkeypatch.setattr(nas.io.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real(fd)))
    nas.io.fsync_tree(root)
    want = {p.stat().st_ino for p in [root, *root.rglob("*")]}
    assert set(synced) == want and len(synced) == len(want)  # 3 files, 2 folders, each once
