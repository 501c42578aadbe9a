"""Static allocation (proxies/allocation.py, nas.static.static_plan): a multiple-choice knapsack
that never exceeds the budget, fills it, is exact on small cases, and is deterministic."""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

import proxies
from nas import Plan, apply_plan, discover
from nas.budget import parse_budget
from nas.static import static_plan
from search_spaces.anatomy import _BERT, AdaptableModule, ModelLayout, base_param_count
from proxies.allocation import allocate, lp_bound, _groups
from search_spaces import SPACES, SearchSpace

from tests.conftest import make_tiny_model, tiny_batch


def minilm_layout() -> ModelLayout:
    """MiniLM's shapes (6 BERT layers, hidden 384, ffn 1536) without loading the model."""
    dims = {"attention.self.query": ("q", 384, 384), "attention.self.key": ("k", 384, 384),
            "attention.self.value": ("v", 384, 384), "attention.output.dense": ("o", 384, 384),
            "intermediate.dense": ("ffn_up", 384, 1536), "output.dense": ("ffn_down", 1536, 384)}
    mods = [AdaptableModule(f"bert.encoder.layer.{i}.{rel}", i, role, di, do)
            for i in range(6) for rel, (role, di, do) in dims.items()]
    return ModelLayout("bert", "bert.encoder.layer", 6, 384, mods, _BERT)


def assert_fills(chosen, cands, scores, budget):
    """``chosen`` is non-empty and left no room for any module it does not use: with positive
    scores an exact knapsack would have taken an unused module's smallest choice had it fitted, so
    what is left of the budget is below that size (a bound derived from the sizes, not a ratio)."""
    params = sum(c.params for c in chosen)
    assert chosen and params <= budget
    used = {c.target for c in chosen}
    unused = [c.params for c in cands if c.target not in used and scores[c.key] > 0]
    assert budget - params < min(unused, default=math.inf), (params, budget, min(unused))


def random_scores(cands, seed):
    rng = random.Random(seed)
    # bigger choices score more on the same module, with diminishing returns
    return {c.key: rng.uniform(0.5, 2.0) * c.params ** 0.5 for c in cands}


@pytest.fixture(scope="module")
def minilm_cands():
    return SPACES["default"].candidates(minilm_layout())


@pytest.mark.parametrize("budget", [2_000, 22_713, 60_000, 227_132, 1_000_000])
@pytest.mark.parametrize("seed", [0, 1])
def test_never_exceeds_and_fills_the_budget(minilm_cands, budget, seed):
    scores = random_scores(minilm_cands, seed)
    alloc = allocate(minilm_cands, scores, budget)
    assert alloc.params == sum(c.params for c in alloc) <= budget
    targets = [c.target for c in alloc]
    assert len(targets) == len(set(targets))  # at most one choice per module / shortcut
    most = sum(max(c.params for c in minilm_cands if c.target == t) for t in {c.target for c in minilm_cands})
    if budget <= most:
        assert alloc.params >= 0.95 * budget, (alloc.params, budget)
        assert_fills(alloc, minilm_cands, scores, budget)
    else:  # the whole space fits: every module and shortcut gets its best-scoring choice
        best = {}
        for c in minilm_cands:
            if c.target not in best or scores[c.key] > scores[best[c.target].key]:
                best[c.target] = c
        assert sorted(c.key for c in alloc) == sorted(c.key for c in best.values())
    assert alloc.lp_bound >= alloc.total_score - 1e-9 and alloc.gap >= 0
    assert alloc.total_score == pytest.approx(sum(scores[c.key] for c in alloc))


def test_grid_dp_for_huge_budgets_stays_under_and_near_the_bound(minilm_cands):
    scores = random_scores(minilm_cands, 3)
    alloc = allocate(minilm_cands, scores, 3_000_000, max_cells=500)
    assert alloc.method == "grid-dp" and alloc.params <= 3_000_000
    exact = allocate(minilm_cands, scores, 3_000_000)
    assert alloc.total_score >= 0.97 * exact.total_score
    assert alloc.relative_gap < 0.05


def test_exact_on_small_instances_vs_brute_force():
    layout = minilm_layout()
    space = SearchSpace(name="s", choices=[{"type": "lora", "rank": 2}, {"type": "lora", "rank": 8},
                                           {"type": "more", "nblocks": 4, "rank": 4}, {"type": "circulant"}],
                        roles=["q", "ffn_up"], shortcuts=["s_res1"])
    layout.modules = [m for m in layout.modules if m.layer < 2]
    layout.num_layers = 2
    cands = space.candidates(layout)
    for seed, budget in itertools.product(range(4), [3_000, 9_000, 20_000, 40_000]):
        rng = random.Random(seed)
        scores = {c.key: rng.uniform(0.0, 1.0) for c in cands}
        groups = _groups(cands, scores, budget)
        best = 0.0
        for combo in itertools.product(*[[None] + g for g in groups.values()]):
            w = sum(o.params for o in combo if o)
            if w <= budget:
                best = max(best, sum(o.score for o in combo if o))
        alloc = allocate(cands, scores, budget)
        assert alloc.total_score == pytest.approx(best, rel=1e-12)
        assert lp_bound(groups, budget) >= best - 1e-12


def test_budget_specs_and_bad_scores(minilm_cands):
    scores = random_scores(minilm_cands, 0)
    big = allocate(minilm_cands, scores, parse_budget("200k"))
    assert big.budget == 200_000 and big.method == "exact-dp"
    assert_fills(big, minilm_cands, scores, 200_000)
    assert allocate(minilm_cands, scores, parse_budget("0.1%", 22_713_216)).budget == 22_713
    with pytest.raises(ValueError, match="no score"):
        allocate(minilm_cands, {}, 10_000)
    with pytest.raises(ValueError, match="finite"):
        allocate(minilm_cands, {**scores, minilm_cands[0].key: float("nan")}, 10_000)
    assert list(allocate(minilm_cands, {k: 0.0 for k in scores}, 10_000)) == []


def test_shortcuts_compete_with_modules(minilm_cands):
    scores = {c.key: (10.0 if c.is_shortcut else 0.01) for c in minilm_cands}
    alloc = allocate(minilm_cands, scores, 6144 * 5)
    assert alloc and all(c.is_shortcut for c in alloc) and len(alloc) == 5


# ---- static_plan -----------------------------------------------------------------------------
def _batches():
    out = []
    for s in range(2):
        b = tiny_batch(seed=20 + s)
        b["labels"] = torch.tensor([1, 0, 1])
        out.append(b)
    return out


@pytest.mark.parametrize("proxy", ["grad-proj", "snip"])
def test_static_plan_is_deterministic_and_fits(proxy):
    model = make_tiny_model("bert")
    layout = discover(model)
    space = SearchSpace(name="t", choices=[{"type": "lora", "rank": 2}, {"type": "lora", "rank": 4},
                                           {"type": "more", "nblocks": 2, "rank": 2}, {"type": "circulant"},
                                           {"type": "kronecker", "rank": 4}],
                        shortcuts=["s_res1", "s_in"])
    budget = "5%"
    plans = [static_plan(model, layout, space, _batches(), budget, proxy, seed=7,
                                 model={"name_or_path": "tiny-bert"}, task={"name": "toy"})
             for _ in range(2)]
    a, b = (p.to_dict() for p in plans)
    for d in (a, b):
        d["provenance"].pop("scoring_seconds")
    assert a == b
    plan = plans[0]
    limit = parse_budget(budget, base_param_count(model))
    assert plan.budget == {"spec": "5%", "params": limit, "counts": "adapters+shortcuts"}
    assert 0 < plan.trainable_params <= limit
    assert plan.trainable_params >= 0.9 * limit
    prov = plan.provenance
    assert prov["proxy"] == proxy and prov["seed"] == 7
    assert set(prov["scores"]) == {c.key for c in proxies.allocate(space.candidates(layout),
                                                                    proxies.score_candidates(model, layout, space.candidates(layout), _batches(), proxy, seed=7), limit)}
    assert prov["allocation"]["gap"] >= 0 and prov["allocation"]["params"] == plan.trainable_params
    assert prov["summary"]["candidates"] == len(space.candidates(layout))
    assert plan.training["allocation"] == "static" and plan.model["name_or_path"] == "tiny-bert"
    # round-trips and applies
    again = Plan.from_dict(plan.to_dict())
    apply_plan(make_tiny_model("bert"), again, layout)


def test_static_plan_absolute_budget_and_default_proxy():
    model = make_tiny_model("llama")
    layout = discover(model)
    plan = static_plan(model, layout, "heterolora", _batches(), "3k")
    assert plan.trainable_params <= 3000 and plan.provenance["proxy"] == proxies.DEFAULT_PROXY
    cands = SPACES["heterolora"].candidates(layout)
    scores = proxies.score_candidates(model, layout, cands, _batches(), proxies.DEFAULT_PROXY, seed=0)
    chosen = [c for c in cands if c.key in plan.provenance["scores"]]
    assert sum(c.params for c in chosen) == plan.trainable_params
    assert_fills(chosen, cands, scores, 3000)
    assert plan.budget["params"] == 3000
