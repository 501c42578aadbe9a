"""benchmarks/no_signal_rule.py: the leave-one-task-out picks a rule on the other tasks and charges
its regret on the task left out; ties go to the field's order; lrs are picked on shared seeds; the
rule it calls today's matches nas.baselines.preferred; its files are the same bytes on a rerun."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import no_signal_rule as nsr  # noqa: E402
from tests.factories import minilm_layout  # noqa: E402


def _cell(scores: dict[str, tuple[float, ...]]) -> dict:
    """{rule: per-seed scores} -> a cell as the script builds it (one lr, seeds 0..n-1)."""
    return {r: nsr.entry(r, 100, {2e-3: dict(enumerate(v))}, "fixed") for r, v in scores.items()}


def _cells(table: dict) -> dict:
    return nsr.finish({("src", t, b): _cell(s) for (t, b), s in table.items()})


# At 0.1% today's rule names the MLP.  "widest" is best on task a and worst on task b.
TABLE = {("a", "0.1%"): {"widest": (90, 91, 89), "MLP": (85, 86, 84), "q,v": (80, 81, 79)},
         ("b", "0.1%"): {"widest": (70, 71, 69), "MLP": (80, 82, 78), "q,v": (75, 76, 74)}}


def test_a_rule_best_on_one_task_is_charged_its_regret_on_the_other():
    rows = {r["task"]: r for r in nsr.loo(_cells(TABLE), "src")}
    assert rows["b"]["picked_on"] == ["a"] and rows["b"]["rule"] == "widest"
    assert rows["b"]["best"] == "MLP" and rows["b"]["regret"] == pytest.approx(10.0)
    assert rows["b"]["diffs"] == pytest.approx([10.0, 11.0, 9.0])  # paired by seed: MLP − widest
    assert rows["b"]["train_regret"] == 0.0 and rows["b"]["runner_up"] == pytest.approx(5.0)
    # picked on b: the MLP and today's rule (the same placement here) tie; the field's order names the MLP
    assert rows["a"]["rule"] == "MLP" and rows["a"]["tied"] == ["today's rule"]
    assert rows["a"]["regret"] == pytest.approx(5.0)


def test_the_pick_averages_each_tasks_budgets_before_the_tasks():
    table = {**TABLE, ("c", "0.1%"): {"widest": (80,), "MLP": (79,), "q,v": (60,)},
             ("c", "0.02%"): {"widest": (80,), "MLP": (50,), "q,v": (79,)}}  # today's rule: widest
    cells = _cells(table)
    rule, mean, tied = nsr.pick(cells, ["b", "c"])
    # b: MLP 0, today 0, widest 10, q,v 5; c: MLP (1 + 30) / 2, today (1 + 0) / 2, widest 0, q,v (20 + 1) / 2
    assert mean == pytest.approx({"MLP": 7.75, "today's rule": 0.25, "widest": 5.0, "q,v": 7.75})
    assert (rule, tied) == ("today's rule", [])
    assert nsr.pick(cells, ["b", "c"], tie=7.5)[0] == "MLP"  # a wide tie: the field's order decides


def test_cells_missing_a_rule_stay_out_of_the_leave_one_out():
    cells = _cells({**TABLE, ("a", "0.02%"): {"widest": (80,), "q,v": (79,)}})
    assert set(nsr.complete(cells)) == {("src", "a", "0.1%"), ("src", "b", "0.1%")}


def test_the_lr_is_picked_on_the_seeds_every_rate_has():
    e = nsr.entry("p", 1, {1e-3: {0: 80.0, 1: 80.0, 2: 95.0}, 2e-3: {0: 82.0, 1: 81.0}}, "fixed")
    assert e["lr"] == 2e-3 and e["seeds"] == {0: 82.0, 1: 81.0} and e["how"].startswith("best on dev")


@pytest.mark.parametrize("budget", ["0.1%", "0.05%", "0.02%"])
def test_todays_rule_is_nas_baselines_preferred(budget):
    from nas.baselines import baselines_at, preferred

    layout = minilm_layout()
    size = int(float(budget.rstrip("%")) / 100 * nsr.MINILM)
    assert nsr.todays_rule(budget).lower() == preferred(baselines_at(layout, size), layout)[0]


def test_csv_and_plot_are_the_same_bytes_twice(tmp_path):
    cells = _cells(TABLE)
    rows = nsr.loo(cells, "src")
    for name in ("one", "two"):
        nsr.write_csv(tmp_path / f"{name}.csv", cells, rows)
        nsr.plot(tmp_path / f"{name}.png", cells)
    for ext in ("csv", "png"):
        assert (tmp_path / f"one.{ext}").read_bytes() == (tmp_path / f"two.{ext}").read_bytes()
