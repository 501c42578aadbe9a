"""The elastic super-adapter and super-network: sub-plans equal standalone plans, nested ranks
share storage, the sampler stays within budget and is reproducible."""
from __future__ import annotations

import copy

import pytest
import torch

from nas import Plan, discover
from nas.inject import apply_plan
from search_spaces.shortcuts import ShortcutSet
from search_spaces import SPACES, make_adapter
from search_spaces.elastic import ElasticLinear
from search_spaces.supernet import (PlanSampler, Selection, activate, attach_supernet,
                                    elastic_modules, extract, plan_state_dict, selection_params,
                                    shortcut_choices, train_supernet_steps)
from tests.conftest import linear_base, logits, make_tiny_model, randomize_, tiny_batch

CHOICES = SPACES["default"].choices + [{"type": "lora", "rank": 1}, {"type": "ldr", "rank": 2},
                                       {"type": "more", "nblocks": 4, "rank": 1},
                                       # same slot as rank 4 / 8, other scale (alpha / r = 4)
                                       {"type": "lora", "rank": 4, "alpha": 16.0},
                                       {"type": "ia3"}, {"type": "ia3", "side": "in"}]


def elastic(conv1d=False, d_in=32, d_out=48):
    em = ElasticLinear(linear_base(d_in, d_out, conv1d=conv1d), CHOICES)
    randomize_(em.slots.parameters(), seed=3)  # B factors start at zero: make every path count
    return em


@pytest.mark.parametrize("conv1d", [False, True])
def test_every_choice_equals_its_standalone_adapter(conv1d):
    em = elastic(conv1d)
    x = torch.randn(4, 5, 32, dtype=torch.float64)
    base_y = em.base(x)
    for choice in CHOICES:
        em.activate(choice)
        y = em(x)
        # A standalone adapter built by the registry, given the same weights by name.
        kind, hp = choice["type"], {k: v for k, v in choice.items() if k != "type"}
        ref = make_adapter(kind, em.base, **hp)
        with torch.no_grad():
            for name, t in em.tensors(em.member(choice)).items():
                getattr(ref, name).copy_(t)
        torch.testing.assert_close(y, ref(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(y, em.extract(choice)(x), rtol=0, atol=1e-12)
        assert (y - base_y).abs().max() > 1e-3, choice  # the update is really there
    em.activate(None)
    torch.testing.assert_close(em(x), base_y, rtol=0, atol=0)


def test_lora_scale_follows_the_active_rank():
    em = elastic()
    for r in (1, 2, 4, 8):
        m = em.member({"type": "lora", "rank": r})
        assert m.adapter.scale == 2.0 and m.adapter.hparams["rank"] == r
    em2 = ElasticLinear(linear_base(32, 48), [{"type": "lora", "rank": 2, "alpha": 16},
                                              {"type": "lora", "rank": 8, "alpha": 16}])
    assert len(em2.slots) == 1
    assert em2.member({"type": "lora", "rank": 2, "alpha": 16}).adapter.scale == 8.0


@pytest.mark.parametrize("small,large,names", [
    ({"type": "lora", "rank": 2}, {"type": "lora", "rank": 8}, {"lora_A": 0, "lora_B": 1}),
    ({"type": "more", "nblocks": 4, "rank": 2}, {"type": "more", "nblocks": 4, "rank": 4},
     {"blkdiag1": 1, "blkdiag2": 2}),
    ({"type": "ldr", "rank": 1}, {"type": "ldr", "rank": 2}, {"ldr_c": 0, "ldr_s": 0}),
])
def test_nested_ranks_share_storage_and_train_only_their_slice(small, large, names):
    em = elastic()
    lo, hi = em.tensors(em.member(small)), em.tensors(em.member(large))
    for name, dim in names.items():
        assert lo[name].data_ptr() == hi[name].data_ptr()
        torch.testing.assert_close(lo[name], hi[name].narrow(dim, 0, lo[name].shape[dim]))
    shared = em.extract(small, copy=False)
    assert all(getattr(shared, n).data_ptr() == hi[n].data_ptr() for n in names)
    before = {n: p.detach().clone() for n, p in em.named_parameters()}
    opt = torch.optim.SGD([p for p in em.parameters() if p.requires_grad], lr=0.1)
    em.activate(small)
    em(torch.randn(6, 32, dtype=torch.float64)).pow(2).sum().backward()
    opt.step()
    slot = em.member(small).slot
    for n, p in em.named_parameters():
        delta = (p.detach() - before[n]).abs()
        pname = n.rsplit(".", 1)[-1]
        if n.startswith(f"slots.{slot}.") and pname in names:
            k = lo[pname].shape[names[pname]]
            assert delta.narrow(names[pname], 0, k).max() > 0, n
            assert delta.narrow(names[pname], k, p.shape[names[pname]] - k).max() == 0, n
        else:
            assert delta.max() == 0, n  # other slots and the frozen base stay put


def test_deepcopy_after_a_training_forward():
    em = elastic()
    em.activate({"type": "more", "nblocks": 4, "rank": 2})
    em(torch.randn(3, 32, dtype=torch.float64)).sum().backward()
    clone = copy.deepcopy(em)
    x = torch.randn(3, 32, dtype=torch.float64)
    torch.testing.assert_close(clone(x), em(x))


def supernet(family="bert", seed=0):
    model = make_tiny_model(family, seed=seed).double()
    layout = discover(model)
    cands = SPACES["default"].candidates(layout)
    sset = ShortcutSet(model, layout, shortcut_choices(cands))
    attach_supernet(model, cands, shortcuts=sset)
    randomize_([p for em in elastic_modules(model).values() for p in em.slots.parameters()]
               + list(sset.parameters()), std=0.05, seed=4)
    return model, layout, cands


@pytest.mark.parametrize("family", ["bert", "llama", "opt"])
def test_sub_plan_equals_the_standalone_plan_with_the_same_weights(family):
    model, layout, cands = supernet(family)
    batch = {k: v for k, v in tiny_batch().items()}
    base = make_tiny_model(family).double()
    with torch.no_grad():
        base_logits = logits(base, batch)
    sampler = PlanSampler(cands, budget=6000, seed=1, p_off=0.1)
    kinds = set()
    for _ in range(4):
        sel = sampler.random()
        assert sel.modules
        kinds |= {c["type"] for c in sel.modules.values()}
        activate(model, sel)
        with torch.no_grad():
            got = logits(model, batch)
        plan_model = apply_plan(make_tiny_model(family).double(),
                                Plan(modules=sel.modules, shortcuts=sel.shortcuts))
        missing, unexpected = plan_model.load_state_dict(plan_state_dict(model, sel), strict=False)
        assert not unexpected
        with torch.no_grad():
            want = logits(plan_model, batch)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
        assert (got - base_logits).abs().max() > 1e-6
    assert len(kinds) >= 3
    activate(model, Selection())
    with torch.no_grad():
        torch.testing.assert_close(logits(model, batch), base_logits, rtol=0, atol=0)


def test_every_shortcut_alone_equals_its_standalone_plan():
    model, layout, cands = supernet("bert")
    batch = tiny_batch()
    for c in [c for c in cands if c.is_shortcut]:
        sel = Selection.of([c])
        activate(model, sel)
        with torch.no_grad():
            got = logits(model, batch)
        plan_model = apply_plan(make_tiny_model("bert").double(), Plan(shortcuts=sel.shortcuts))
        plan_model.load_state_dict(plan_state_dict(model, sel), strict=False)
        with torch.no_grad():
            torch.testing.assert_close(got, logits(plan_model, batch), rtol=0, atol=1e-10)
        assert extract(model, sel).shortcuts[c.target].enabled


def test_activate_rejects_what_the_supernet_does_not_hold():
    model, layout, cands = supernet("bert")
    name = layout.modules[0].name
    with pytest.raises(ValueError, match="not in this super-adapter"):
        activate(model, {"modules": {name: {"type": "lora", "rank": 16}}})
    with pytest.raises(ValueError, match="does not hold"):
        activate(model, {"modules": {"nope.query": {"type": "lora", "rank": 2}}})
    with pytest.raises(ValueError, match="holds"):
        activate(model, {"shortcuts": {"0.s_res1": {"rank": 4, "alpha": 4.0}}})


def test_sampler_stays_within_budget_and_covers_kinds():
    model, layout, cands = supernet("bert")
    budget = 5000
    sampler = PlanSampler(cands, budget, seed=0)
    kinds = set()
    for _ in range(300):
        sel = sampler.sample()
        n = sampler.params(sel)
        assert n == selection_params(model, sel) <= budget
        kinds |= {c["type"] for c in sel.modules.values()} | ({"shortcut"} if sel.shortcuts else set())
    assert kinds == {c.kind for c in cands}


def test_largest_is_maximal_and_prior_is_in_the_cycle():
    model, layout, cands = supernet("bert")
    budget = 8000
    prior = [c for c in cands if c.kind == "circulant"][:3]
    sampler = PlanSampler(cands, budget, seed=0, prior=prior)
    draws = [sampler.sample() for _ in range(8)]
    assert draws[1] == Selection.of(prior) == draws[5]
    largest = sampler.sizes(draws[0])
    left = budget - sum(largest.values())
    assert left >= 0
    for target, group in sampler.groups.items():  # no module could take a larger option
        have = largest.get(target, 0)
        assert all(c.params <= have or c.params - have > left for c in group), target
    with pytest.raises(ValueError, match="over the budget"):
        PlanSampler(cands, 50, prior=prior)


def test_same_seed_same_samples():
    _, _, cands = supernet("bert")
    seq1, seq2, seq3 = ([s.sample() for _ in range(12)] for s in (
        PlanSampler(cands, 6000, seed=7), PlanSampler(cands, 6000, seed=7),
        PlanSampler(cands, 6000, seed=8)))
    assert seq1 == seq2 and seq1 != seq3


def test_train_supernet_steps_lowers_the_loss():
    model, layout, cands = supernet("bert")
    batch = {**tiny_batch(batch=8, seed=5), "labels": torch.tensor([0, 1] * 4)}
    opt = torch.optim.Adam([p for em in elastic_modules(model).values() for p in em.slots.parameters()]
                           + list(model.more_shortcuts.parameters()), lr=1e-2)
    sampler = PlanSampler(cands, 6000, seed=0, cycle=("largest",))
    losses = train_supernet_steps(model, iter([batch] * 30), opt, sampler, 30)
    assert len(losses) == 30 and losses[-1] < losses[0]
