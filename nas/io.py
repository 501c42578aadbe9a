"""Atomic file writes: a file is either its old content or its new one, never half-written."""
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
