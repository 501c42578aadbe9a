"""The saved runs of a benchmark study: one archive per study, benchmarks/results/runs/<study>.tar.xz
(tracked), and the folder the scripts read and write, benchmarks/.cache/runs/<study>/ (ignored).

``runs_dir(study)`` extracts the archive into the folder when the folder is missing or the archive
changed since (then its files are written over the folder's: runs made here and not packed stay).
A script that trains calls ``pack(study)`` when it finishes, which writes the archive from the
folder, the same runs always to the same bytes; a --report-only run only extracts and reads.
"""
from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import tarfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ARCHIVES = BENCH / "results" / "runs"
CACHE = BENCH / ".cache"
STAMP = ".archive-sha256"  # in the folder: the archive it was last extracted from or packed to
SKIP = ("*.png", "*.safetensors")  # a search's plots and super-network weights: no report reads them, and they would be most of an archive
XZ_PRESET = 6


def archive(study: str) -> Path:
    return ARCHIVES / f"{study}.tar.xz"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stamp(folder: Path) -> str | None:
    stamp = folder / STAMP
    return stamp.read_text().strip() if stamp.is_file() else None


def runs_dir(study: str) -> Path:
    """benchmarks/.cache/runs/<study>/, brought up to date with the study's archive (if any)."""
    folder, packed = CACHE / "runs" / study, archive(study)
    if not packed.is_file() or _stamp(folder) == (sha := _sha(packed)):
        return folder
    fresh = not folder.exists()  # then extracted beside it and renamed: never seen half-written
    into = folder.with_name(f".{study}.{os.getpid()}.extracting") if fresh else folder
    with tarfile.open(packed, "r:xz") as tar:
        tar.extractall(into, filter="data")
    (into / STAMP).write_text(sha + "\n")
    if fresh:
        try:
            into.rename(folder)
        except OSError:  # another process extracted it first
            shutil.rmtree(into)
    return folder


def members(folder: Path) -> list[Path]:
    """The files an archive of ``folder`` holds: not hidden ones (temporary files, the stamp) nor SKIP."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and not any(p.match(pattern) for pattern in SKIP))


def pack(study: str, folder: Path | None = None) -> Path:
    """Write results/runs/<study>.tar.xz from the study's folder: sorted names, mtime 0, owner 0,
    mode 644, a fixed xz preset, so the same files give the same bytes; atomically."""
    from nas.io import atomic_write_bytes

    folder = folder or CACHE / "runs" / study
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in members(folder):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mtime, info.mode = path.stat().st_size, 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    data = lzma.compress(raw.getvalue(), format=lzma.FORMAT_XZ, preset=XZ_PRESET)
    out = archive(study)
    if not out.is_file() or out.read_bytes() != data:
        atomic_write_bytes(out, data)
    (folder / STAMP).write_text(hashlib.sha256(data).hexdigest() + "\n")
    return out


def where(folder: Path) -> str:
    """How a report names the runs folder: the archive it is packed into, or the folder itself."""
    folder = Path(folder).resolve()
    root = (CACHE / "runs").resolve()
    study, *sub = folder.relative_to(root).parts if folder.is_relative_to(root) and folder != root else ("",)
    if study and archive(study).is_file():
        inner = "/".join(sub) + "/" if sub else ""
        return f"{archive(study).relative_to(BENCH.parent)} ({inner}<task>/<phase>/*.json)"
    rel = folder.relative_to(BENCH.parent) if folder.is_relative_to(BENCH.parent) else folder
    return f"{rel}/<task>/<phase>/*.json"


def publish(study: str, text: str, path: Path, report_only: bool) -> None:
    """A study's end: its report written to ``path`` and printed; its runs packed unless
    ``report_only`` (nothing new was trained)."""
    path.write_text(text)
    print(text)
    if not report_only:
        pack(study)
