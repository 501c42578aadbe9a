"""benchmarks/placement_ceiling.py's pure parts: every hand-built plan fits its budget on a
MiniLM-shaped layout, and differences are paired by seed."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import placement_ceiling as pc  # noqa: E402
from nas.baselines import baselines_at  # noqa: E402
from search_spaces import count_params  # noqa: E402
from search_spaces.shortcuts import SHORTCUT_KINDS, shortcut_params  # noqa: E402
from tests.factories import minilm_layout, mpnet_layout  # noqa: E402

MINILM_PARAMS = 22_713_216  # base parameters without the task head
MPNET_PARAMS = 108_895_872
HIDDEN = 384  # MiniLM's residual width: a shortcut's d


@pytest.mark.parametrize("model", ["minilm", "mpnet"])
def test_every_hand_plan_fits_its_budget_and_uniform_plans_are_uniform(model):
    layout, base = (minilm_layout(), MINILM_PARAMS) if model == "minilm" else (mpnet_layout(), MPNET_PARAMS)
    for budget, plans in pc.PLANS[model].items():
        limit = int(float(budget.rstrip("%")) / 100 * base)
        for name, rules in plans.items():
            pick = pc.rules_plan(rules)
            chosen = [(m, pick(m)) for m in layout.modules if pick(m)]
            size = sum(count_params(c["type"], m.d_in, m.d_out, **{k: v for k, v in c.items() if k != "type"})
                       for m, c in chosen)
            size += sum(shortcut_params(HIDDEN, **c) * len(layers) for roles, layers, c in rules
                        for kind in roles if kind in SHORTCUT_KINDS)
            assert 0 < size <= limit, (budget, name, size)
            if name.startswith("uniform"):
                assert len({str(c) for _, c in chosen}) == 1, name
            if "the widest that fits" in name:  # the search's widest baseline at this size
                assert size == baselines_at(layout, limit)["widest"].params, (budget, name)


def test_summary_pairs_differences_by_seed():
    table = {"0.1%": [("uniform a", None, 1), ("uniform b", None, 1), ("plan c", None, 1)]}
    acc = {"uniform a": (0.80, 0.82, 0.84), "uniform b": (0.81, 0.83, 0.85), "plan c": (0.80, 0.84, 0.84)}
    rows = [{"budget": "0.1%", "lr": 2e-3, "plan": n, "seed": s, "accuracy": a}
            for n, accs in acc.items() for s, a in enumerate(accs)]
    out = {r["plan"]: r for r in pc.summarize(rows, table)}
    assert out["plan c"]["best_uniform"] == "uniform b"
    mean, sd = out["plan c"]["vs_best_uniform"]  # per seed: -1, +1, -1 points
    assert math.isclose(mean, -1 / 3) and math.isclose(sd, math.sqrt(4 / 3))
    assert out["uniform a"]["vs_ref"] == (0.0, 0.0)
    assert math.isnan(out["plan c"]["vs_widest"][0])  # no plan is named the widest


def test_summary_tests_each_plan_against_the_widest_paired_by_seed():
    from scipy import stats

    table = {"0.1%": [("uniform q,v", None, 1), ("uniform attention (the widest that fits)", None, 1),
                      ("MLP", None, 1)]}
    wide = (0.80, 0.76, 0.79, 0.71, 0.78)
    mlp = (0.79, 0.80, 0.81, 0.80, 0.80)
    rows = [{"budget": "0.1%", "lr": 2e-3, "plan": n, "seed": s, "accuracy": a}
            for n, accs in (("uniform q,v", wide), ("uniform attention (the widest that fits)", wide),
                            ("MLP", mlp)) for s, a in enumerate(accs)]
    out = {r["plan"]: r for r in pc.summarize(rows, table)}
    d = [100 * (m - w) for m, w in zip(mlp, wide)]
    assert math.isclose(out["MLP"]["vs_widest"][0], sum(d) / 5)
    assert math.isclose(out["MLP"]["p_vs_widest"], stats.ttest_rel(mlp, wide).pvalue)
    assert math.isnan(out["uniform q,v"]["p_vs_widest"])  # identical per seed: no test


def test_each_plan_is_compared_at_its_own_best_lr_paired_by_seed():
    table = {"0.02%": [("uniform v (the widest that fits)", None, 1), ("MoRe v", None, 1)]}
    acc = {("uniform v (the widest that fits)", 5e-3): (0.82, 0.83, 0.83),
           ("uniform v (the widest that fits)", 2e-2): (0.76, 0.51, 0.51),
           ("MoRe v", 5e-3): (0.81, 0.81, 0.80), ("MoRe v", 2e-2): (0.83, 0.81, 0.83),
           ("MoRe v", 5e-2): (0.90,)}  # one seed only: never the best lr over three-seed ones
    rows = [{"budget": "0.02%", "lr": lr, "plan": n, "seed": s, "accuracy": a}
            for (n, lr), accs in acc.items() for s, a in enumerate(accs)]
    best = {r["plan"]: r for r in pc.at_best_lr(pc.summarize(rows, table), rows)}
    assert best["MoRe v"]["lr"] == 2e-2 and best["uniform v (the widest that fits)"]["lr"] == 5e-3
    mean, sd = best["MoRe v"]["vs_widest"]  # per seed: +1, -2, 0 points
    assert math.isclose(mean, -1 / 3) and math.isclose(sd, math.sqrt(7 / 3))
    assert "| 0.02% | MoRe v | 1 | 0.02 |" in "\n".join(pc.best_lr_lines(pc.summarize(rows, table), rows))


def test_a_difference_with_nothing_to_pair_with_reads_as_a_dash():
    nan = float("nan")
    assert pc.pm((nan, nan)) == "—"
    assert pc.pm((1.0, nan)) == "+1.0"  # one seed: no spread to show
    assert pc.pm((-0.3, 0.5)) == "-0.3 ± 0.5"


def test_a_malformed_seed_or_lr_list_is_a_usage_error_not_a_traceback(capsys):
    import pytest

    for flag, value, kind in (("--seeds", "0,x", "int_list"), ("--lrs", "2e-3,fast", "float_list")):
        with pytest.raises(SystemExit) as exit_:
            pc.main([flag, value, "--report-only"])
        assert exit_.value.code == 2
        assert f"argument {flag}: invalid {kind} value: '{value}'" in capsys.readouterr().err
