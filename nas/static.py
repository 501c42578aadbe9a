"""Static allocation (HeteroLoRA's): score a space's candidates once, allocate, fix the plan."""
from __future__ import annotations

import copy
import time
from collections import Counter

from torch import nn

from proxies import DEFAULT_PROXY, allocate, get_proxy, score_candidates
from proxies.scoring import score_summary
from proxies.signals import LossFn
from search_spaces import load_space
from search_spaces.anatomy import ModelLayout, base_param_count, discover
from search_spaces.space import kind_of

from .budget import parse_budget
from .plan import BUDGET_COUNTS, Plan


def static_plan(model: nn.Module, layout: ModelLayout | None, space, batches: list[dict],
                budget: str | int, /, proxy: str = DEFAULT_PROXY, *, seed: int = 0,
                loss_fn: LossFn | None = None, **plan_fields) -> Plan:
    """Score the space's candidates once and fix the plan (HeteroLoRA's static allocation).

    ``space``: a SearchSpace, a built-in name or a JSON path; ``budget``: '0.1%' (of the base
    model without its task head) or a count ('200k'); it counts adapters + shortcuts only.
    ``plan_fields``: Plan fields to set (model, task, training, ...); the first five
    arguments are positional-only so that ``model={...}`` can be one of them.  The proxy, the chosen
    candidates' scores, a score summary, the budget and the allocation gap go to
    ``plan.provenance``.  Same seed and batches -> same plan.
    """
    layout = layout or discover(model)
    space = load_space(space)
    candidates = space.candidates(layout)
    base = base_param_count(model)
    budget_params = parse_budget(budget, base)
    name = proxy if proxy is not None else DEFAULT_PROXY
    t0 = time.perf_counter()
    scores = score_candidates(model, layout, candidates, batches, name, loss_fn=loss_fn, seed=seed)
    seconds = time.perf_counter() - t0
    alloc = allocate(candidates, scores, budget_params)
    fields = copy.deepcopy(plan_fields)
    model_field = fields.setdefault("model", {})
    model_field.setdefault("name_or_path", getattr(getattr(model, "config", None), "_name_or_path", "") or "unknown")
    model_field.setdefault("base_params", base)
    fields["budget"] = {"spec": str(budget), "params": budget_params, "counts": BUDGET_COUNTS,
                        **fields.get("budget", {})}
    fields.setdefault("training", {}).setdefault("allocation", "static")
    chosen_kinds = Counter(kind_of(c) for c in alloc)
    fields["provenance"] = {
        **fields.get("provenance", {}),
        "proxy": get_proxy(name).name,
        "space": space.name,
        "seed": seed,
        "num_batches": len(batches),
        "scoring_seconds": round(seconds, 3),
        "scores": {c.key: scores[c.key] for c in alloc},
        "summary": {**score_summary(scores), "chosen": len(alloc),
                    "chosen_by_kind": dict(sorted(chosen_kinds.items()))},
        "allocation": alloc.summary(),
    }
    plan = Plan.from_candidates(alloc, layout, **fields)
    if plan.trainable_params > budget_params:  # defensive: allocate() guarantees this
        raise AssertionError(f"plan uses {plan.trainable_params} > budget {budget_params}")
    return plan
