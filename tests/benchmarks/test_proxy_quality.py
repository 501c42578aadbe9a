"""benchmarks/proxy_quality.py: the tables are made from the kept <name>.json alone, name the
command, date and machine of each task's run, and --report-only writes the same bytes again."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import _proxy_report  # noqa: E402
import proxy_quality  # noqa: E402

MODULES = [f"bert.encoder.layer.{i}.attention.self.query" for i in range(3)]
CONFIG = {"threads": 1, "score_batches": 4, "batch": 16, "supernet_steps": 0, "lr": 0.002, "head_steps": 0,
          "freeze_head": False, "steps": 32, "max_len": 128, "eval_fracs": [0.5, 1.0], "n_val": 192, "seeds": 1,
          "layers": [0, 1, 2], "roles": ["q"]}
MADE_BY = {"command": "python benchmarks/proxy_quality.py --tasks MRPC", "date": "2026-01-02 03:04",
           "machine": "host: a CPU, 2 CPU cores; Python 3.x"}


def _result(task="MRPC", made_by=MADE_BY):
    scores = {f"{m}|lora r8": 1e-3 * (i + 1) for i, m in enumerate(MODULES)}
    proxy = {"seconds": 2.5, "scores": scores, "spearman": 0.5, "p_value": 0.667, "steps_equivalent": 0.5,
             "trial_fraction": 0.0025}
    res = {"task": task, "proxies": {"fisher": proxy, "snip": {**proxy, "spearman": -0.5}},
           "importance": {m: 1e-4 * i for i, m in enumerate(MODULES)}, "head_only_val_loss": {0: [0.6, 0.59]},
           "modules": MODULES, "seconds": 60.0, "train_step_seconds": 5.0, "config": CONFIG}
    return {**res, "made_by": made_by} if made_by else res


def test_report_only_rewrites_the_tables_from_the_kept_json(tmp_path, capsys):
    _proxy_report.write_tables([_result()], tmp_path, ["a note"], "pq")
    md, table = (tmp_path / "pq.md").read_bytes(), (tmp_path / "pq.csv").read_bytes()
    assert json.loads((tmp_path / "pq.json").read_text())["notes"] == ["a note"]
    for _ in range(2):
        assert proxy_quality.main(["--report-only", "--name", "pq", "--out", str(tmp_path)]) == 0
        assert (tmp_path / "pq.md").read_bytes() == md and (tmp_path / "pq.csv").read_bytes() == table
    text = md.decode()
    assert text.split("\n\n")[1] == ("Made by `python benchmarks/proxy_quality.py --tasks MRPC` (MRPC) on "
                                     "2026-01-02 03:04; machine: host: a CPU, 2 CPU cores; Python 3.x.")
    assert "- a note" in text and "| fisher | MRPC | +0.500 | 0.667 | 2.5 | 0.50 | 0.25% |" in text


def test_tasks_of_one_run_share_a_line_and_unrecorded_runs_say_so(tmp_path, capsys):
    _proxy_report.write_tables([_result(), _result("RTE"), _result("CoLA", None)], tmp_path)
    lines = (tmp_path / "proxy_quality.md").read_text().split("\n\n")[1].splitlines()
    assert lines == ["Made by `python benchmarks/proxy_quality.py --tasks MRPC` (MRPC, RTE) on 2026-01-02 03:04; "
                     "machine: host: a CPU, 2 CPU cores; Python 3.x.",
                     "Made by `benchmarks/proxy_quality.py` (CoLA; its command, date and machine were not recorded)."]


def test_report_only_without_the_kept_json_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        proxy_quality.main(["--report-only", "--out", str(tmp_path)])
    assert e.value.code == 2 and "proxy_quality.json" in capsys.readouterr().err
