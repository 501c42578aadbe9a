"""benchmarks/search_vs_baselines_seeds.py: extra seeds join a method only where they train the same
spec at the same lr, and the gap is paired by seed against the better baseline."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import search_vs_baselines_seeds as seeds  # noqa: E402

FIELDS = ("phase", "task", "method", "spec", "lr", "seed", "score")


def _csv_rows():
    rows = []
    for method, spec, lr, accs in (("new-search@0.1%", "plan-x", 5e-3, (0.83, 0.84)),
                                   ("peft-qv@0.1%", "peft-qv-r2", 2e-3, (0.82, 0.82)),
                                   ("widest-lora@0.1%", "peft-attn-r1", 5e-3, (0.81, 0.80))):
        rows += [dict(zip(FIELDS, ("final", "sst2", method, spec, str(lr), str(seed), str(a))))
                 for seed, a in enumerate(accs)]
    rows.append(dict(zip(FIELDS, ("select", "sst2", "peft-qv@0.1%", "peft-qv-r2", "0.002", "0", "0.1"))))
    return rows


def _run(spec, lr, seed, score, task="sst2"):
    return {"task": task, "spec": spec, "lr": lr, "seed": seed, "score": score, "status": "ok"}


def test_extra_seeds_join_only_the_same_spec_at_the_same_lr():
    runs = [_run("plan-x", 5e-3, 2, 0.85), _run("plan-x", 2e-3, 3, 0.99),  # other lr: not this method's
            _run("peft-qv-r2", 2e-3, 2, 0.80), _run("peft-qv-r2", 2e-3, 0, 0.10),  # the CSV's seed 0 stays
            _run("plan-x", 5e-3, 4, 0.99, task="mrpc")]
    table = seeds.scores(_csv_rows(), runs)
    assert table["sst2", "new-search@0.1%"] == {0: 83.0, 1: 84.0, 2: 85.0}
    assert table["sst2", "peft-qv@0.1%"] == {0: 82.0, 1: 82.0, 2: 80.0}
    assert ("mrpc", "new-search@0.1%") not in table


def test_gap_is_paired_by_seed_against_the_better_baseline_by_mean():
    runs = [_run("plan-x", 5e-3, 2, 0.85), _run("peft-qv-r2", 2e-3, 2, 0.80), _run("peft-attn-r1", 5e-3, 2, 0.79)]
    (row,) = seeds.cells(seeds.scores(_csv_rows(), runs), {"sst2": ("0.1%",)})
    assert row["better"] == "(a)"  # 81.3 against (b)'s 80.0
    assert [round(d, 6) for d in row["gap"]] == [1.0, 2.0, 5.0]
    assert row["vs_r8"] == []  # no r8 runs: no pairs
    text = "\n".join(seeds.lines([row], "cmd"))
    assert "**+2.67**" in text and f"standard error {math.sqrt(13) / 3:.2f}"  # var 13/3 over 3 seeds in text


def test_main_reads_the_csv_and_the_runs_folders(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(_csv_rows())
    (tmp_path / "r" / "sst2" / "final").mkdir(parents=True)
    (tmp_path / "r" / "sst2" / "final" / "x.json").write_text(json.dumps(_run("plan-x", 5e-3, 2, 0.85)))
    assert seeds.main(["--csv", str(path), "--runs-dir", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    assert "84.0 ± 1.0 (n=3)" in (tmp_path / "o.md").read_text()


def test_a_missing_runs_folder_is_an_error_not_an_empty_join(tmp_path, capsys):
    import pytest

    path = tmp_path / "runs.csv"
    path.write_text(",".join(FIELDS) + "\n")
    with pytest.raises(SystemExit) as e:
        seeds.main(["--csv", str(path), "--runs-dir", str(tmp_path / "nope")])
    assert e.value.code == 2 and "no such folder" in capsys.readouterr().err
