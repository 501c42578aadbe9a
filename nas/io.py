"""File-system helpers: atomic writes (a file is its old content or its new one, never half-written;
a writer killed before its rename leaves a hidden temporary file that the next write removes),
whether a folder can take a run's outputs, and the crash drills' test hook."""
from __future__ import annotations

import glob
import os
import socket
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


def fsync_tree(root: Path) -> None:
    """Every file and folder under ``root`` (and ``root``) flushed to disk, so that a rename that
    publishes it, and the removals after it, never get to disk before its content (power loss)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(folder))


def fsync_dir(folder: Path) -> None:
    """A folder's entries (a rename into it, a removal) flushed to disk; not on Windows, where a
    folder cannot be opened."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _temp_head(path: Path) -> str:  # + "<pid>.": names the writer, so a later write can tell a dead one's file
    return f".{path.name}.{socket.gethostname()}-"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs; always True on Windows, where signal 0 is
    CTRL_C_EVENT (so nothing of a live process is ever swept there)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# A write lives for milliseconds; an older temp file whose process is gone was left by a kill (the
# age also spares a live writer in another PID namespace that shares this host name).
STALE_TEMP_S = 60.0


def remove_stale_temps(path: Path) -> list[Path]:
    """The hidden temporary files of ``path`` that a writer killed before its rename (kill -9)
    left behind, removed: those of this host whose process is gone, older than STALE_TEMP_S
    (POSIX only)."""
    if os.name != "posix":
        return []
    head = _temp_head(path)
    gone = []
    for tmp in path.parent.glob(glob.escape(head) + "*.tmp"):
        pid = tmp.name[len(head):].split(".", 1)[0]
        try:
            old = time.time() - tmp.stat().st_mtime > STALE_TEMP_S
        except FileNotFoundError:  # renamed or removed meanwhile
            continue
        if old and pid.isdigit() and not pid_alive(int(pid)):  # this process counts as alive
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_temp_head(path)}{os.getpid()}.", suffix=".tmp")
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
