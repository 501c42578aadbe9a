"""proxy_quality's trained importance: the default space trained as one super-network (a
budget-feasible sub-plan per step, AdaLoRA's smoothed sensitivity updated after each backward),
then every candidate scored on the trained weights (proxies.trained.trained_importance), so it
sits in the table beside the zero-cost proxies scored at initialisation."""
from __future__ import annotations

import copy
import itertools
import time

import torch

from nas.budget import parse_budget
from proxies.trained import Sensitivity, trained_importance
from search_spaces.anatomy import HEAD_NAMES, base_param_count
from search_spaces.shortcuts import ShortcutSet
from search_spaces.supernet import PlanSampler, attach_supernet, shortcut_choices, train_supernet_steps


def trained_scores(model, layout, candidates, batches, *, steps: int, budget: str, lr: float,
                   warmup: int, seed: int = 0) -> tuple[dict[str, float], float, list[float]]:
    """({candidate key: trained importance}, seconds, training losses) on a copy of ``model``:
    every candidate as an elastic super-adapter (shortcuts included where the family has them)
    plus the task head, ``steps`` AdamW steps over ``batches`` (cycled), each on a sub-plan
    from PlanSampler within ``budget`` (largest, then random ones)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(False)
    sc = shortcut_choices(candidates)
    sset = ShortcutSet(m, layout, sc) if sc and layout.supports_shortcuts else None
    cands = [c for c in candidates if sset is not None or not c.is_shortcut]
    attach_supernet(m, cands, shortcuts=sset)
    for name in HEAD_NAMES:
        head = getattr(m, name, None)
        if head is not None:
            head.requires_grad_(True)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sampler = PlanSampler(cands, parse_budget(budget, base_param_count(model)), seed=seed)
    sens = Sensitivity(m, warmup_steps=warmup)
    losses = train_supernet_steps(m, itertools.cycle(batches), opt, sampler, steps,
                                  after_backward=lambda _: sens.update())
    scores = trained_importance(sens, cands)
    scores.update({c.key: 0.0 for c in candidates if c.key not in scores})  # no shortcut set
    return scores, time.perf_counter() - t0, losses
