"""benchmarks/_runs_archive.py: the same runs pack to the same bytes, the archive extracts back to
them, and reading (what --report-only does) never rewrites the archive."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _runs_archive as ra  # noqa: E402

FILES = {"sst2/final/a__lr0.002__s0__1.json": '{"score": 0.8}', "sst2/search_0.1%/plan.json": "{}",
         "mrpc/final/b.json": '{"score": 0.7}'}


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.setattr(ra, "ARCHIVES", tmp_path / "results" / "runs")
    monkeypatch.setattr(ra, "CACHE", tmp_path / ".cache")
    folder = tmp_path / ".cache" / "runs" / "demo"
    for name, text in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (folder / "sst2/search_0.1%/pareto.png").write_bytes(b"\x89PNG")  # SKIP: never packed
    (folder / "sst2/final/.a.json.host-1.tmp").write_text("half")  # a writer's temporary file
    return folder


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_packing_the_same_runs_twice_gives_the_same_bytes(study, tmp_path):
    first = ra.pack("demo").read_bytes()
    for p in study.rglob("*.json"):  # other mtimes and modes, the same content
        p.touch()
        p.chmod(0o600)
    assert ra.pack("demo").read_bytes() == first
    (study / "mrpc/final/c.json").write_text("{}")
    assert ra.pack("demo").read_bytes() != first


def test_extraction_recreates_the_runs_without_the_skipped_files(study, tmp_path):
    archive = ra.pack("demo")
    moved = tmp_path / "old"
    study.rename(moved)
    assert ra.runs_dir("demo") == study
    assert tree(study) == FILES  # no plot, no temporary file
    assert not list(tmp_path.glob(".cache/runs/.demo*"))  # the extraction folder was renamed
    import tarfile

    with tarfile.open(archive, "r:xz") as tar:
        assert sorted(m.name for m in tar.getmembers()) == sorted(FILES)
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar.getmembers()} == {(0, 0, 0, "", "", 0o644)}


def test_reading_never_rewrites_the_archive_and_a_changed_archive_is_merged(study, tmp_path):
    archive = ra.pack("demo")
    before = archive.stat().st_mtime_ns, archive.read_bytes()
    (study / "mrpc/final/local.json").write_text("{}")  # a run made here, not packed yet
    assert ra.runs_dir("demo") == study and (study / "mrpc/final/local.json").is_file()
    assert (archive.stat().st_mtime_ns, archive.read_bytes()) == before
    # the archive changes elsewhere (a pull): its files join the folder's, local ones stay
    other = tmp_path / "elsewhere"
    for name, text in {**FILES, "rte/final/new.json": "{}"}.items():
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_text(text)
    ra.pack("demo", other)
    ra.runs_dir("demo")
    assert (study / "rte/final/new.json").is_file() and (study / "mrpc/final/local.json").is_file()


def test_a_study_without_an_archive_is_its_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(ra, "ARCHIVES", tmp_path / "none")
    monkeypatch.setattr(ra, "CACHE", tmp_path / ".cache")
    assert ra.runs_dir("x") == tmp_path / ".cache" / "runs" / "x" and not (tmp_path / ".cache").exists()


def test_reports_name_the_archive_of_a_study_folder():
    assert ra.where(ra.CACHE / "runs" / "glue" / "search-15min") == \
        "benchmarks/results/runs/glue.tar.xz (search-15min/<task>/<phase>/*.json)"
    assert ra.where(ra.CACHE / "runs" / "glue") == "benchmarks/results/runs/glue.tar.xz (<task>/<phase>/*.json)"
    assert ra.where(Path("/tmp/r")) == "/tmp/r/<task>/<phase>/*.json"
    assert ra.where(ra.CACHE / "runs" / "glue_quick") == "benchmarks/.cache/runs/glue_quick/<task>/<phase>/*.json"
