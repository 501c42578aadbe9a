"""Trained-weight importance: AdaLoRA sensitivity on the super-network, normalised per kind."""
from __future__ import annotations

import statistics

import pytest
import torch

from proxies.allocation import allocate
from proxies.trained import Sensitivity, normalise_within_kind, trained_importance
from search_spaces.elastic import ElasticLinear
from search_spaces.supernet import PlanSampler, elastic_modules, train_supernet_steps
from tests.conftest import linear_base, randomize_, tiny_batch
from tests.search_spaces.test_elastic import supernet


def single_layer(choices):
    model = torch.nn.Sequential(ElasticLinear(linear_base(16, 16), choices))
    randomize_(model[0].slots.parameters(), seed=2)
    return model, model[0]


def step(model, em, choice, sens):
    em.activate(choice)
    model(torch.randn(4, 16, dtype=torch.float64)).pow(2).sum().backward()
    sens.update()
    model.zero_grad(set_to_none=True)


def test_only_the_active_slice_is_measured_and_warmup_skips():
    model, em = single_layer([{"type": "lora", "rank": 2}, {"type": "lora", "rank": 8},
                              {"type": "circulant"}])
    sens = Sensitivity(model, warmup_steps=1)
    step(model, em, {"type": "lora", "rank": 8}, sens)  # warm-up: nothing recorded
    assert not sens.ema and sens.steps == 1
    for _ in range(3):
        step(model, em, {"type": "lora", "rank": 2}, sens)
    ema_a = sens.ema[id(em.slots["lora"]["lora_A"])]
    assert ema_a[:2].min() > 0 and ema_a[2:].abs().max() == 0
    assert id(em.slots["circulant"]["circ_c"]) not in sens.ema  # never active: never scored
    assert sens.updates == {"0": 3}
    c2, c8 = ({"type": "lora", "rank": r} for r in (2, 8))
    assert sens.score_tensor(em.slots["lora"]["lora_A"], (0, 2)) > 0
    # rank 8 contains rank 2's slice and nothing else was trained yet: equal scores.
    s = [sum(sens.score_tensor(em.slots[m.slot][n], size) for n, size in m.sizes.items())
         for m in (em.member(c2), em.member(c8))]
    assert s[0] == pytest.approx(s[1]) and s[0] > 0
    step(model, em, c8, sens)
    s8 = sum(sens.score_tensor(em.slots["lora"][n], None) for n in ("lora_A", "lora_B"))
    s2 = sum(sens.score_tensor(em.slots[m.slot][n], sz) for m in [em.member(c2)]
             for n, sz in m.sizes.items())
    assert s8 > s2


def test_uncertainty_off_is_the_plain_moving_average():
    model, em = single_layer([{"type": "lora", "rank": 4}])
    sens = Sensitivity(model, beta1=0.5, uncertainty=False)
    step(model, em, {"type": "lora", "rank": 4}, sens)
    a = em.slots["lora"]["lora_A"]
    assert sens.score_tensor(a, None) == pytest.approx(float(sens.ema[id(a)].sum()))
    with pytest.raises(ValueError, match="beta1"):
        Sensitivity(model, beta1=1.0)


def test_normalisation_is_within_kind_and_scale_free():
    kinds = {"a": "lora", "b": "lora", "c": "lora", "x": "circulant", "y": "circulant"}
    raw = {"a": 1.0, "b": 2.0, "c": 4.0, "x": 1000.0, "y": 3000.0}
    med = normalise_within_kind(raw, kinds, "median")
    assert med == pytest.approx({"a": 0.5, "b": 1.0, "c": 2.0, "x": 0.5, "y": 1.5})
    # Multiplying one kind's raw scores changes nothing after normalisation.
    scaled = {k: v * (1e-3 if kinds[k] == "circulant" else 1.0) for k, v in raw.items()}
    assert normalise_within_kind(scaled, kinds, "median") == pytest.approx(med)
    rank = normalise_within_kind({**raw, "b": 1.0}, kinds, "rank")
    assert rank == pytest.approx({"a": 0.5, "b": 0.5, "c": 1.0, "x": 0.5, "y": 1.0})
    assert normalise_within_kind(raw, kinds, "none") == raw
    with pytest.raises(ValueError, match="valid"):
        normalise_within_kind(raw, kinds, "max")


def test_trained_importance_after_supernet_training_feeds_the_knapsack():
    model, layout, cands = supernet("bert")
    batch = {**tiny_batch(batch=8, seed=5), "labels": torch.tensor([0, 1] * 4)}
    params = [p for em in elastic_modules(model).values() for p in em.slots.parameters()]
    opt = torch.optim.Adam(params + list(model.more_shortcuts.parameters()), lr=1e-2)
    sens = Sensitivity(model, warmup_steps=2)
    budget = 4000
    train_supernet_steps(model, iter([batch] * 16), opt, PlanSampler(cands, budget, seed=0), 16,
                         after_backward=sens.update)
    scores = trained_importance(sens, cands)
    assert set(scores) == {c.key for c in cands}
    assert all(v >= 0 for v in scores.values())
    for kind in {c.kind for c in cands}:  # each kind's median trained candidate scores 1
        pos = [scores[c.key] for c in cands if c.kind == kind and scores[c.key] > 0]
        assert pos and statistics.median(pos) == pytest.approx(1.0)
    alloc = allocate(cands, scores, budget)
    assert alloc and alloc.params <= budget
