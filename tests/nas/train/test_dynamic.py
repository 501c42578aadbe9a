"""Dynamic allocation (nas/train/dynamic.py) in the trainer: reallocation within the budget, weights
and optimizer state kept, resume, outputs."""
from __future__ import annotations

import json

import pytest
import torch

from nas import Plan
from nas.train import train
from tests.factories import cfg_for, lora_plan

# Tiny models: one intra-op thread is much faster than two on a shared, busy machine.
torch.set_num_threads(1)


# ---- dynamic ---------------------------------------------------------------------------------
def test_dynamic_allocation(tiny_bert, layout, sentiment, tmp_path):
    roles = ("q", "k", "v", "o")
    modules = {m.name: {"type": "lora", "rank": 4, "alpha": 8.0} for m in layout.modules if m.role in roles}
    # Start with only the value projections on; the pool also holds q, k, o and 2 shortcuts.
    for name, c in modules.items():
        c["enabled"] = name.endswith("value")
    shortcuts = {"0.s_res1": {"rank": 4, "alpha": 4.0}, "1.s_cut": {"rank": 4, "alpha": 4.0, "enabled": False}}
    plan = Plan(model={"name_or_path": str(tiny_bert)}, modules=modules, shortcuts=shortcuts)
    budget = 3 * 4 * 64  # three rank-4 modules (a shortcut is 2*4*32 = 256 params too)
    plan.budget = {"params": budget}
    out = tmp_path / "dyn"
    res = train(plan, cfg_for(sentiment, allocation="dynamic", dynamic_every=0.34, epochs=2,
                              output_dir=str(out)))
    assert res.enable_counts is not None and set(res.enable_counts) == set(modules) | set(shortcuts)
    report = json.loads((out / "enable_counts.json").read_text())
    assert report["steps"] == res.steps == 12 and report["reallocations"] == 5
    assert all(0 <= c <= res.steps for c in report["counts"].values())
    # The greedy takes every candidate that still fits, so a candidate it left off did not fit:
    # less than the largest candidate's size is left unused (here every candidate is 256: 3 on).
    sizes = [c["params"] for c in report["candidates"].values()]
    assert sum(sizes) > budget and budget - max(sizes) < res.adapter_params <= budget
    # Each step had at most the budget switched on, and more than the budget less one candidate.
    per_step = sum(c * report["candidates"][n]["params"] for n, c in report["counts"].items())
    assert (budget - max(sizes)) * res.steps < per_step <= budget * res.steps
    assert (out / "enable_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    saved = Plan.load(out / "plan.json")
    on = [n for n, c in saved.modules.items() if c["enabled"]] + \
        [k for k, c in saved.shortcuts.items() if c.get("enabled", True)]
    assert sum(report["candidates"][n]["params"] for n in on) == res.adapter_params
    assert not (out / "peft_adapter").exists() or all(
        not c.get("enabled", True) for c in saved.shortcuts.values())


def test_dynamic_plan_over_budget_is_allocated_before_step_one(tiny_bert, layout, sentiment):
    plan = lora_plan(tiny_bert, layout, roles=("q", "k", "v", "o"))  # 8 modules, all on
    budget = 2 * 4 * 64
    plan.budget = {"params": budget}
    res = train(plan, cfg_for(sentiment, allocation="dynamic", epochs=1))
    assert res.adapter_params == budget  # 2 of the 8 equal modules: the greedy fills the budget
    assert sum(res.enable_counts.values()) == 2 * res.steps  # exactly 2 on at every step


def test_progress_bar(tiny_bert, layout, sentiment, capsys):
    train(lora_plan(tiny_bert, layout), cfg_for(sentiment, progress=True, eval_every=2))
    err = capsys.readouterr().err
    assert "12/12" in err and "it/s" in err  # transformers' progress bar
    assert "done: accuracy" in err
    train(lora_plan(tiny_bert, layout), cfg_for(sentiment, progress=False, eval_every=2))
    captured = capsys.readouterr()
    assert "12/12" not in captured.err and "eval_accuracy" not in captured.out


@pytest.mark.parametrize("proxy", [None, "live-grad-norm"])
def test_reallocation_keeps_weights_and_optimizer_state(tiny_bert, layout, sentiment, proxy):
    from nas.train.dynamic import DynamicAllocator, select_within_budget
    from nas.train import prepare

    assert select_within_budget({"a": 3, "b": 2, "c": 1}, {"a": 5, "b": 4, "c": 1}, 6) == ["a", "c"]
    plan = lora_plan(tiny_bert, layout, roles=("q", "v"))
    tr = prepare(plan, cfg_for(sentiment, allocation="dynamic", dynamic_proxy=proxy, max_steps=3,
                               dynamic_every=100.0))  # every module on (the budget is the plan's) for 3 steps
    alloc: DynamicAllocator = tr.allocator
    assert alloc.score_name == (proxy or "proxies:" + __import__("proxies").DEFAULT_PROXY)
    tr.train()
    alloc.budget = 2 * 4 * 64  # now only two fit
    before = {n: [p.detach().clone() for p in e.parameters()] for n, e in alloc.pool.items()}
    state_ids = {id(p) for p in tr.optimizer.state}
    info = alloc.reallocate(tr.scoring_batches(3), 3)
    assert info["enabled"] == 2 and len(alloc.enabled_names()) == 2
    assert set(info["scores"]) == set(alloc.pool) and all(v >= 0 for v in info["scores"].values())
    for n, e in alloc.pool.items():  # scoring changed no weight
        assert all(torch.equal(a, b) for a, b in zip(before[n], e.parameters()))
    off = [n for n in alloc.pool if n not in alloc.enabled_names()]
    tr.training_step(tr.model, next(iter(tr.get_train_dataloader())))  # one more step
    tr.optimizer.step()
    tr.optimizer.zero_grad()
    for n in off:  # disabled: frozen, optimizer state kept
        assert all(torch.equal(a, b) for a, b in zip(before[n], alloc.pool[n].parameters()))
        assert all(id(p) in {id(q) for q in tr.optimizer.state} for p in alloc.pool[n].parameters())
    assert {id(p) for p in tr.optimizer.state} >= state_ids
