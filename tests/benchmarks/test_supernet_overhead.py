"""benchmarks/supernet_overhead.py (measuring only: its md is the only record): the md names the
command, date and machine of the run that measured it."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import supernet_overhead  # noqa: E402

ROWS = [("tiny", "lora qv r8", 2048, 3.6, 3.7, 1.0), ("tiny", "supernet", 2048, 7.2, 8.04, 2.0)]


def test_the_md_names_command_date_and_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(supernet_overhead, "measure", lambda size, rounds, iters: ROWS)
    supernet_overhead.main(["--sizes", "tiny", "--rounds", "2", "--out", str(tmp_path)])
    text = (tmp_path / "supernet_overhead.md").read_text()
    title, made_by = text.split("\n\n")[:2]
    assert title.endswith(", 1 thread(s), 2x4 steps per method)")
    assert made_by.startswith(f"Made by `python benchmarks/supernet_overhead.py --sizes tiny --rounds 2 --out {tmp_path}` "
                              "on 20") and "; machine: " in made_by and "CPU cores" in made_by
    assert "| tiny | supernet | 2048 | 7.2 | 8.0 | 2.00 |" in text


def test_write_md_is_deterministic(tmp_path):
    meta = {"command": "python benchmarks/supernet_overhead.py", "date": "2026-01-02 03:04", "machine": "m",
            "torch": "2.x", "threads": 1, "rounds": 3, "iters": 4}
    first = supernet_overhead.write_md(ROWS, meta, tmp_path / "a.md")
    assert supernet_overhead.write_md(ROWS, meta, tmp_path / "a.md") == first == (tmp_path / "a.md").read_text()
    assert "Made by `python benchmarks/supernet_overhead.py` on 2026-01-02 03:04; machine: m;" in first
