"""File-system helpers: atomic writes (a file is its old content or its new one, never half-written),
whether a folder can take a run's outputs, and the crash drills' test hook."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

_PAUSE_HITS: dict[str, int] = {}


def pause_for_test(stage: str, folder: str | os.PathLike) -> None:
    """Test hook for the crash drills (tests/nas/search/test_drills.py): with
    MORE_NAS_TEST_PAUSE=STAGE[:N], the Nth time (default 1st) this process reaches STAGE it touches
    FOLDER/.paused-STAGE and sleeps, so a test can kill -9 it there.  Unset: does nothing."""
    want, nth = os.environ.get("MORE_NAS_TEST_PAUSE", ""), "1"
    head, _, tail = want.rpartition(":")
    if tail.isdigit():
        want, nth = head, tail
    if want != stage:
        return
    _PAUSE_HITS[stage] = _PAUSE_HITS.get(stage, 0) + 1
    if _PAUSE_HITS[stage] == int(nth):
        Path(folder, f".paused-{stage}").touch()
        time.sleep(300)


def folder_problem(out: Path) -> tuple[str, Path] | None:
    """Why ``out`` cannot serve as an output folder, or None: ("file", out) when it is a file,
    ("under file", parent) when its nearest existing parent is a file, ("read-only", parent) when
    that parent cannot be written into (a pseudo file system such as /proc counts as read-only)."""
    if out.exists() and not out.is_dir():
        return "file", out
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return "under file", probe
    if not os.access(probe, os.W_OK | os.X_OK) or str(probe.resolve()).startswith(("/proc", "/sys")):
        return "read-only", probe
    return None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        pause_for_test(f"write:{path.name}", path.parent)  # the new content written, not yet renamed
        # mkstemp creates 0600; give the file the mode open() would (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
