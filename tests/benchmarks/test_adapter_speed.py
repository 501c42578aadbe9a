"""benchmarks/adapter_speed.py: the md is made from the kept CSV and JSON alone, names the command
that measured it, and --report-only writes the same bytes again without measuring."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import adapter_speed  # noqa: E402

METHODS = {"base (frozen dense)": (0, 10.0), "ours lora r8": (512, 12.5), "peft lora r8": (512, 13.0)}


def _rows(d=32):
    rows = [{"d": d, "method": m, "params": n, "ms": ms, "ms_q1": ms - 0.5, "ms_q3": ms + 0.5, "ms_min": ms - 1,
             "cpu_ms": ms * 0.7, "peak_mb": 1.25} for m, (n, ms) in METHODS.items()]
    return adapter_speed.add_relative(rows)


def _keep(out: Path, command="python benchmarks/adapter_speed.py --dims 32"):
    meta = {"command": command,
            "info": {"date": "2026-01-02T03:04:05", "device": "cpu", "cpu_count": 2, "cpu": "x86_64",
                     "torch_threads": 1, "torch": "2.x", "peft": "0.x", "python": "3.x"},
            "settings": {"dims": [32], "tokens": 64, "warmup": 1, "repeats": 2, "iters": 3, "previous": False}}
    adapter_speed.write_results(_rows(), meta, out)


def test_report_only_rewrites_the_same_md_from_the_kept_files(tmp_path, capsys):
    _keep(tmp_path)
    first = (tmp_path / "adapter_speed.md").read_bytes()
    (tmp_path / "adapter_speed.md").unlink()
    adapter_speed.main(["--report-only", "--out", str(tmp_path)])
    assert (tmp_path / "adapter_speed.md").read_bytes() == first
    adapter_speed.main(["--report-only", "--out", str(tmp_path)])
    assert (tmp_path / "adapter_speed.md").read_bytes() == first
    text = first.decode()
    assert text.splitlines()[2] == "- command: `python benchmarks/adapter_speed.py --dims 32`"
    assert "- date: 2026-01-02T03:04:05" in text and "- machine: 2 CPU cores (x86_64)" in text
    assert "| 32 | ours lora r8 | 512 | 12.5 (12.0-13.0) | 8.8 | +2.5 / +1.8 | 1.000 / 1.000 | 0.962 / 0.962 |" in text


def test_a_measuring_run_records_its_own_command_not_report_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(adapter_speed, "bench_dim", lambda d, *a, **k: _rows(d))
    adapter_speed.main(["--dims", "32", "--threads", "1", "--out", str(tmp_path)])
    measured = (tmp_path / "adapter_speed.md").read_text()
    meta = json.loads((tmp_path / "adapter_speed.json").read_text())
    assert meta["command"] == f"python benchmarks/adapter_speed.py --dims 32 --threads 1 --out {tmp_path}"
    assert f"- command: `{meta['command']}`" in measured and meta["settings"]["dims"] == [32]
    adapter_speed.main(["--report-only", "--out", str(tmp_path)])
    assert (tmp_path / "adapter_speed.md").read_text() == measured
    assert "--report-only" not in measured


def test_report_only_without_the_kept_json_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        adapter_speed.main(["--report-only", "--out", str(tmp_path)])
    assert e.value.code == 2 and "adapter_speed.json" in capsys.readouterr().err
