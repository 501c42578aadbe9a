"""benchmarks/search_budget_sweep.py: the gain over the best baseline, paired by seed, per cost budget."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import search_budget_sweep as sweep  # noqa: E402
from glue import SEARCH_VS_BASELINES  # noqa: E402


def row(cb, seed, dev, plan="plan-a", mult=None, budget="0.1%"):
    return {"task": "sst2", "budget": budget, "cost_budget": cb, "seed": seed, "plan": plan, "params": 19200,
            "origin": "baseline mlp", "lr": 2e-3, "dev": dev, "multiple": cb * 0.9 if mult is None else mult}


BASES = {("sst2", "0.1%"): {"PEFT q,v": {"spec": "q", "params": 18432, "lr": 2e-3, "dev": {0: 80.0, 1: 81.0, 2: 82.0}},
                           "widest": {"spec": "w", "params": 18432, "lr": 2e-3, "dev": {0: 83.0, 1: 82.0, 2: 84.0}}}}


def test_cells_pair_each_seed_with_the_best_baseline_by_dev_mean():
    rows = [row(0.5, 0, 84.0), row(0.5, 1, 83.0), row(0.5, 2, 83.0, plan="plan-b"), row(2, 0, 85.0), row(2, 3, 90.0),
            row(0.5, 0, 70.0, budget="0.02%")]
    half, two, small = sweep.cells(rows, {**BASES, ("sst2", "0.02%"): {"PEFT q,v": BASES["sst2", "0.1%"]["PEFT q,v"]}})
    assert half["best"] == "widest" and half["n"] == 3 and half["plans"] == ["plan-a", "plan-b"]
    assert half["gain"] == pytest.approx((1 + 1 - 1) / 3) and half["cost"] == pytest.approx(0.45)
    assert two["n"] == 1 and two["gain"] == pytest.approx(2.0)  # seed 3 has no baseline run: left out
    # each budget against its own baselines
    assert (small["budget"], small["best"], small["gain"]) == ("0.02%", "PEFT q,v", pytest.approx(-10.0))
    assert sweep.cells(rows, {("sst2", "0.1%"): {}}) == []


def test_the_report_and_plot_are_written(tmp_path):
    rows = [row(0.5, 0, 84.0), row(0.5, 1, 83.0)]
    text = sweep.report(rows, BASES, "cmd", SEARCH_VS_BASELINES, "range")
    assert "| sst2 | 0.1% | widest | w | 18,432 | 0.002 | 83.0 ± 1.0 |" in text
    assert "| sst2 | 0.1% | 0.5 | 0.45 | 2 | plan-a | 83.5 ± 0.7 | widest | +1.00 ± 0.00 |" in text
    one = sweep.report(rows[:1], BASES, "cmd", SEARCH_VS_BASELINES, "range")
    assert "| 84.0 (n=1) | widest | +1.00 (n=1) | nan |" in one  # one seed: no spread shown as nan
    sweep.plot(sweep.cells(rows, BASES), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
