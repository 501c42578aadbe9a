"""benchmarks/short_trial_lr.py: a finished cell is read back, and the table averages seeds per lr."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import short_trial_lr  # noqa: E402


def _row(seed, steps, lr, loss):
    return {"task": "sst2", "rows": 8000, "budget": "0.1%", "placement": "mlp", "params": 19200,
            "seed": seed, "steps": steps, "lr": lr, "loss128": loss}


def test_a_finished_cell_is_not_loaded_again(tmp_path):
    done = {f"sst2:8000:0.1%:{s}:20:{lr:g}": _row(s, 20, lr, 0.6) for s in (0, 1) for lr in (1e-3, 5e-3)}
    # a data folder that does not exist: loading the cell would fail
    short_trial_lr.run_cell(("sst2", 8000, "0.1%"), [20], (1e-3, 5e-3), [0, 1], done, tmp_path / "none",
                            save=lambda d: (_ for _ in ()).throw(AssertionError("nothing to save")))
    assert len(done) == 4


def test_table_means_over_seeds_per_rate(tmp_path):
    done = {str(i): r for i, r in enumerate([_row(0, 40, 1e-3, 0.69), _row(1, 40, 1e-3, 0.67),
                                             _row(0, 40, 5e-3, 0.55), _row(1, 40, 5e-3, 0.53)])}
    text = short_trial_lr.write_md(done, tmp_path / "t.md")
    row = next(line for line in text.splitlines() if line.startswith("| sst2 8000 rows 0.1%"))
    assert "| 40 | 0.680 (0.690, 0.670) | 0.540 (0.550, 0.530) |" in row and "mlp r=1 (19,200)" in row
    assert (tmp_path / "t.md").read_text() == text
