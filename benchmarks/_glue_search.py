"""The searched methods of benchmarks/glue.py (more-search plans and the baselines sized to
them) and the method tables: ``make_methods`` (the full GLUE table) and ``comparison_methods``
(the search vs uniform LoRA baselines: the super-network search against uniform LoRA at the plan's
size)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from nas import Plan
from nas.baselines import uniform_lora
from nas.io import atomic_write_text

from _glue_methods import (MATCHED_WHERES, PEFT_MAX_RANK, SURM_CHOICES, Method, NotApplicable, Spec,
                           TaskCtx, fresh_model, head_only, heterolora_dynamic, heterolora_static,
                           match_peft_rank, peft_lora, peft_spec, spec_from_plan, surm, uniform)

BUDGETS = ("0.02%", "0.05%", "0.1%", "0.3%")
# Widest first: the placement of the uniform LoRA baseline is the first one where rank 1 fits.
# nas.baselines placement -> label
WHERE = {"all linear": "all", "attention": "attn", "query,value": "qv", "value": "v", "MLP": "mlp"}


def budget_tag(budget: str) -> str:
    return budget.replace("%", "pct")


def search_name(budget: str, strategy: str | None = None) -> str:
    """The search's folder under runs/<task>/ (no strategy: the full GLUE table's folders, unchanged)."""
    return f"search_{budget}" if strategy is None else f"search_{strategy}_{budget}"


def _study_seconds(out: Path) -> float:
    """Summed durations of the finished (complete or pruned) trials of the study in ``out``
    (a resumed search's wall time is lost). A trial cut off by an interruption is failed on
    resume, and its span would count the whole time the run was down, so it is left out."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    total = 0.0
    for name in optuna.get_all_study_names(storage):
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False,
                                                                             states=finished):
            if t.datetime_start and t.datetime_complete:
                total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total


def run_or_load_search(ctx: TaskCtx, budget: str, strategy: str | None = None, overrides: dict | None = None,
                       folder: str | None = None) -> dict[str, Any]:
    """more-search on the task (trials score on held-out TRAIN, never dev), resumable:
    the finished result is ``<search_name>/glue_search.json``; an interrupted one resumes
    its Optuna journal.  ``strategy`` goes to SearchConfig.strategy when the engine has
    that field (recorded as ``strategy_applied``); None leaves the engine's default.  ``overrides``:
    more SearchConfig fields (seed, lr_test, cost_budget...), recorded with the settings; ``folder``
    the search's folder under runs/<task>/ (default search_name)."""
    from nas.search import SearchConfig, run_search

    out = ctx.runs_dir / (folder or search_name(budget, strategy))
    done, settings_file = out / "glue_search.json", out / "glue_search_settings.json"
    settings = {**ctx.proto.search_settings(ctx.task), "budget": budget,
                **({"strategy": strategy} if strategy else {}), **(overrides or {})}
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        raise SystemExit(f"{out} holds a search with other settings; remove it or use another "
                         f"--runs-dir")
    if done.is_file():
        return json.loads(done.read_text())
    resumed = (out / "study.journal").is_file()
    atomic_write_text(settings_file, json.dumps(settings, indent=1))
    applied = strategy is not None
    # Built from the recorded settings, so that what is recorded is what ran (the task's own
    # epochs size the search's stages: 0.5x of MRPC's 3-epoch run, not of one epoch).
    st = settings
    cfg = SearchConfig(**({"strategy": strategy} if applied else {}), task=ctx.task, budget=budget,
                       output_dir=str(out), n_trials=st["trials"], trial_steps=st["steps"],
                       n_evals=st["evals"], holdout=st["holdout"], timeout_s=st.get("timeout_s"),
                       group_by_length=st["group_by_length"], trial_eval_samples=st["holdout_rows"],
                       batch_size=st["batch_size"], max_length=st["max_length"], epochs=st["epochs"],
                       pooling=st.get("pooling", "cls"), model=st.get("model"), progress=False, resume=resumed,
                       data_dir=ctx.data_dir,
                       **{"seed": 0, **(overrides or {})})
    t0 = time.perf_counter()
    res = run_search(cfg, model=fresh_model(ctx, cfg.seed), tokenizer=ctx.tokenizer, data=ctx.data)
    wall = time.perf_counter() - t0
    seconds = wall
    if resumed:  # this process saw only part of it: setup + proxy + every trial's duration
        st = res.stage_seconds
        seconds = st.get("setup", 0.0) + st.get("proxy", 0.0) + _study_seconds(out)
    record = {"budget": budget, "plan": res.plan.to_dict(), "search_time_s": seconds,
              "wall_s_this_process": wall, "resumed": resumed, "best_holdout": res.best_value,
              "trials": {"complete": res.n_complete, "pruned": res.n_pruned, "failed": res.n_failed},
              "stage_seconds": res.stage_seconds, "settings": settings,
              "strategy": strategy, "strategy_applied": applied}
    atomic_write_text(done, json.dumps(record, indent=1, default=str))
    return record


def content_spec(plan: Plan) -> Spec:
    """A searched plan as a run spec labelled by its content: the same plan from two searches is
    one spec, trained once."""
    spec = spec_from_plan("plan", plan)
    spec.label = f"plan-{spec.digest[:8]}"
    return spec


def more_search(budget: str, strategy: str | None = None) -> Callable[[TaskCtx, str], Spec]:
    def build(ctx: TaskCtx, variant: str = "") -> Spec:
        rec = run_or_load_search(ctx, budget, strategy)
        plan = Plan.from_dict(rec["plan"])
        kinds = sorted({c["type"] for c in plan.modules.values()} | ({"shortcut"} if plan.shortcuts else set()))
        label = f"search-{budget_tag(budget)}" if strategy is None else f"search-{strategy}-{budget_tag(budget)}"
        multiple = ((plan.provenance or {}).get("search_cost") or {}).get("multiple")
        return spec_from_plan(label, plan, search_time_s=rec["search_time_s"], search_multiple=multiple,
                              best_holdout=rec["best_holdout"], kinds=kinds,
                              search_dir=str(ctx.runs_dir / search_name(budget, strategy)),
                              strategy=strategy, strategy_applied=rec.get("strategy_applied"))
    return build


def plan_size(ctx: TaskCtx, budget: str, strategy: str | None) -> int:
    return more_search(budget, strategy)(ctx, "").info["plan_params"]


def peft_matched(budget: str, strategy: str | None = None,
                 wheres: tuple[str, ...] = MATCHED_WHERES) -> Callable[[TaskCtx, str], Spec]:
    """PEFT LoRA with the uniform rank (on the placements ``wheres``) whose size is closest
    to the searched plan's."""
    def build(ctx: TaskCtx, variant: str = "") -> Spec:
        params = plan_size(ctx, budget, strategy)
        rank, where = match_peft_rank(ctx, params, wheres)
        return peft_spec(ctx, rank, where, matched_to=params, budget=budget)
    return build


def placement_lora(ctx: TaskCtx, params: int, placement: str = "widest") -> tuple[int, str, list[str]]:
    """(rank, placement, target modules) of nas.baselines' uniform LoRA on ``placement`` with at
    most ``params`` adapter parameters: "widest" (all linear layers, else all attention
    projections, else query,value, else value) or "mlp"; below rank 1 on every layer, rank 1 on
    as many of the top layers as fit ('v-top<k>', 'mlp-top<k>'); at the largest rank that fits."""
    b = uniform_lora(ctx.layout, params, placement)  # the widest's last resort is narrower than any "qv"
    if b is None:
        raise NotApplicable(f"no uniform LoRA on the {placement} placement fits in {params:,} parameters "
                         f"(rank 1 on one layer needs more); give a larger budget")
    base, _, top = b.placement.partition(", top ")
    where = WHERE[base] + (f"-top{top.split()[0]}" if top else "")
    return min(b.rank, PEFT_MAX_RANK), where, list(b.modules)


def peft_placement(budget: str, strategy: str | None = None, placement: str = "widest"
                   ) -> Callable[[TaskCtx, str], Spec]:
    """PEFT LoRA on ``placement`` that fits the searched plan's size (never above it)."""
    def build(ctx: TaskCtx, variant: str = "") -> Spec:
        params = plan_size(ctx, budget, strategy)
        rank, where, targets = placement_lora(ctx, params, placement)
        return peft_spec(ctx, rank, where, targets, matched_to=params, budget=budget)
    return build


# ---- the tables ---------------------------------------------------------------------------
def make_methods(budgets: tuple[str, ...] = BUDGETS) -> list[Method]:
    return [
        Method("head-only", "baseline", head_only, cost=0.45),
        Method("peft-lora-r8", "peft", peft_lora(8, "qv")),
        Method("lora-r8", "ours", uniform({"type": "lora", "rank": 8}, ("q", "v"), "lora-qv-r8")),
        Method("more-N4r4", "ours", uniform({"type": "more", "nblocks": 4, "rank": 4}, ("q", "k", "v"),
                                            "more-qkv-N4r4"), cost=1.1),
        Method("surm-best", "ours", surm, variants=tuple(SURM_CHOICES), cost=1.1),
        Method("heterolora-static", "heterolora", heterolora_static, cost=1.15),
        Method("heterolora-dynamic", "heterolora", heterolora_dynamic, cost=1.3),
        *[Method(f"more-search@{b}", "search", more_search(b), cost=1.1, searched=True,
                 search=search_name(b)) for b in budgets],
        *[Method(f"peft-lora@{b}", "peft-matched", peft_matched(b), searched=True,
                 search=search_name(b)) for b in budgets],
    ]


NEW, OLD = "supernet", "trials"  # SearchConfig.strategy of the new and of today's search
DIAGNOSTIC_BUDGET = "0.1%"


def comparison_methods(task_budgets: dict[str, tuple[str, ...]]) -> list[Method]:
    """Per budget (on the tasks that have it): the new search's plan, (a) PEFT LoRA on
    query,value at its size (never above it: the top layers where rank 1 does not fit on all),
    (b) PEFT LoRA on the widest placement that fits its size, (b') on the MLP (the placement
    PEFT's method comparison favoured), (c) today's search; and PEFT LoRA r=8 on query,value on
    every task."""
    out = []
    for b in dict.fromkeys(b for bs in task_budgets.values() for b in bs):
        tasks = tuple(t for t, bs in task_budgets.items() if b in bs)
        new = dict(searched=True, search=search_name(b, NEW), tasks=tasks)
        out += [Method(f"new-search@{b}", "search-new", more_search(b, NEW), cost=1.1, **new),
                Method(f"peft-qv@{b}", "peft-qv", peft_placement(b, NEW, "qv"), **new),
                Method(f"widest-lora@{b}", "peft-widest", peft_placement(b, NEW), **new),
                Method(f"mlp-lora@{b}", "peft-mlp", peft_placement(b, NEW, "mlp"), **new),
                Method(f"old-search@{b}", "search", more_search(b, OLD), cost=1.1, searched=True,
                       search=search_name(b, OLD), tasks=tasks)]
        # Not (a) where rank 1 on every layer's query,value is above the plan's size (0.02%), but
        # what a user would try first: the rank closest to the plan's size, on every layer.
        out.append(Method(f"peft-qv-all@{b}", "peft-matched", peft_matched(b, NEW, ("qv",)), **new))
        if b == DIAGNOSTIC_BUDGET:  # not a baseline a user would pick: is there a better uniform
            # placement at the plan's size (value,output), i.e. room for a search to win?
            out.append(Method(f"peft-vo@{b}", "peft-matched", peft_matched(b, NEW, ("vo",)), **new))
    return out + [Method("peft-lora-r8", "peft", peft_lora(8, "qv"))]
