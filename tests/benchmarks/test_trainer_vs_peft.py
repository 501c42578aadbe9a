"""benchmarks/trainer_vs_peft.py: each md is made from its kept CSV and JSON alone, names the command
that measured it, and --report-only writes the same bytes again; a report without its JSON (a
measured record) is left as it is."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import trainer_vs_peft  # noqa: E402

META = {"command": "python benchmarks/trainer_vs_peft.py --rounds 2", "date": "2026-01-02 03:04",
        "machine": "host: a CPU, 2 CPU cores; Python 3.x", "notes": ["A note,\nover two lines."]}
MAIN = [{"variant": "peft", "step_ms": 900.5, "vs_peft": 1.0, "vs_ours_fp32": 1.1, "peak_rss_growth_mb": 400.0,
         "mem_vs_peft": 1.0, "dev_accuracy": float("nan"), "dev_f1": float("nan"), "dev_loss": float("nan"),
         "metric_steps": ""},
        {"variant": "ours", "step_ms": 818.6, "vs_peft": 0.909, "vs_ours_fp32": 1.0, "peak_rss_growth_mb": 380.2,
         "mem_vs_peft": 0.951, "dev_accuracy": float("nan"), "dev_f1": float("nan"), "dev_loss": float("nan"),
         "metric_steps": ""}]
METRICS = [{"variant": v, "lr": 0.002, "train_rows": 100, "steps": 7, "accuracy": 0.6838, "f1": 0.8122,
            "loss": 0.6207, "train_s": 5.5} for v in ("peft", "ours")]


def test_report_only_rewrites_both_reports_byte_for_byte(tmp_path, capsys):
    main = trainer_vs_peft.write_table("trainer_vs_peft", MAIN, {**META, "rounds": 2, "steps": 3, "metric_train": 100,
                                                                 "round_ms": {"peft": [901, 899], "ours": [820, 817]}},
                                       tmp_path)
    metrics = trainer_vs_peft.write_table("trainer_vs_peft_metrics", METRICS, META, tmp_path)
    for _ in range(2):
        assert trainer_vs_peft.main(["--report-only", "--out", str(tmp_path)]) == 0
        assert (tmp_path / "trainer_vs_peft.md").read_text() == main
        assert (tmp_path / "trainer_vs_peft_metrics.md").read_text() == metrics
    for text in (main, metrics):
        assert text.split("\n\n")[1] == ("Made by `python benchmarks/trainer_vs_peft.py --rounds 2` on 2026-01-02 03:04; "
                                         "machine: host: a CPU, 2 CPU cores; Python 3.x.")
        assert text.endswith("\nA note,\nover two lines.\n")
    assert "2 interleaved rounds of 3 steps" in main and '{"peft": [901, 899], "ours": [820, 817]}' in main
    assert "| ours | 818.6 | 0.909 | 1.0 | 380.2 | 0.951 | nan | nan | nan |  |" in main
    assert "1 epoch on 100 training rows (seeded subset), batch 16, lr 0.002" in metrics


def test_a_report_without_its_json_is_left_as_measured(tmp_path, capsys):
    (tmp_path / "trainer_vs_peft.md").write_text("measured by hand\n")
    trainer_vs_peft.write_table("trainer_vs_peft_metrics", METRICS, META, tmp_path)
    assert trainer_vs_peft.main(["--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "trainer_vs_peft.md").read_text() == "measured by hand\n"
    assert "trainer_vs_peft.md: no trainer_vs_peft.json" in capsys.readouterr().out
    (tmp_path / "trainer_vs_peft_metrics.json").unlink()
    assert trainer_vs_peft.main(["--report-only", "--out", str(tmp_path)]) == 1  # nothing to regenerate


def test_metric_runs_record_their_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer_vs_peft, "metrics", lambda args, v: {"accuracy": 0.5, "f1": 0.25, "loss": 0.69,
                                                                      "train_s": 1.0, "steps": 2})
    argv = ["--metrics-only", "--variants", "peft", "ours", "--note", "why", "--out", str(tmp_path)]
    trainer_vs_peft.main(argv)
    measured = (tmp_path / "trainer_vs_peft_metrics.md").read_text()
    meta = json.loads((tmp_path / "trainer_vs_peft_metrics.json").read_text())
    assert meta["command"] == "python benchmarks/trainer_vs_peft.py " + " ".join(argv) and meta["notes"] == ["why"]
    assert f"Made by `{meta['command']}` on " in measured and "--report-only" not in measured
    trainer_vs_peft.main(["--report-only", "--out", str(tmp_path)])
    assert (tmp_path / "trainer_vs_peft_metrics.md").read_text() == measured
