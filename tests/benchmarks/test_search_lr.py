"""benchmarks/search_lr.py: its report's gaps, against the grid's pick and the finalists' rate."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import search_lr  # noqa: E402
from glue import SEARCH_VS_BASELINES  # noqa: E402


def row(task, seed, search, grid, off):
    return {"task": task, "seed": seed, "plan": "plan-x", "params": 19200, "origin": "baseline mlp",
            "lr_search": 3e-3, "lr_rule": "lowest held-out loss: ...", "confirmed": 1, "lr_grid": 2e-3,
            "lr_off": 2e-3, "dev_search": search, "dev_grid": grid, "dev_off": off, "search_multiple": 0.4}


def test_the_report_gives_each_task_and_all_their_gaps_and_the_goal():
    rows = [row("sst2", 0, 83.0, 83.4, 83.4), row("sst2", 1, 84.0, 83.0, 82.0), row("mrpc", 0, 80.0, 81.0, 79.0)]
    text = search_lr.report(rows, "python benchmarks/search_lr.py", SEARCH_VS_BASELINES)
    assert "- sst2: at the search's lr 83.5, at the grid pick 83.2; gap +0.30" in text
    assert "at the off rate 82.7; gap +0.80" in text  # sst2 against --lr-test off
    assert "- all: at the search's lr 82.3, at the grid pick 82.5; gap -0.13" in text
    assert "**-0.13** points (goal: no more than 0.3 behind: met)" in text
    worse = search_lr.report([row("mrpc", 0, 79.0, 80.0, 80.0)], "cmd", SEARCH_VS_BASELINES)
    assert "goal: no more than 0.3 behind: not met" in worse
