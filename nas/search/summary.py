"""Report sections of the weight-sharing search: the super-network, the plan's composition (and
whether the knapsack's per-parameter preference explains it), the finalists and the baselines."""
from __future__ import annotations

import statistics
from collections import Counter

from optuna.trial import TrialState

from search_spaces.space import kind_of

from ..plan import Plan
from .config import PLAN_ATTR


def _fmt(v, spec=".4f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def composition(plan) -> Counter:
    out = Counter(c["type"] for c in plan.modules.values())
    if plan.shortcuts:
        out["shortcut"] = len(plan.shortcuts)
    return out


def kind_table(candidates, importance: dict[str, float], plans: dict[str, Counter]) -> list[str]:
    """Per kind: median importance (within-kind normalised), parameters, importance per
    parameter, and how many modules of that kind each plan took.  The knapsack maximises summed
    importance under the budget, so it takes the kind with the highest importance per parameter
    wherever the scores alone decide."""
    by = {}
    for c in candidates:
        by.setdefault(kind_of(c), []).append(c)
    lines = ["| kind | candidates | median params | median importance | importance per 1k params | "
             + " | ".join(plans) + " |", "|---|---:|---:|---:|---:|" + "---:|" * len(plans)]
    for k, cs in sorted(by.items()):
        imp = statistics.median(importance[c.key] for c in cs)
        par = statistics.median(c.params for c in cs)
        lines.append(f"| {k} | {len(cs)} | {par:,.0f} | {imp:.3f} | {1000 * imp / par:.3f} | "
                     + " | ".join(str(p.get(k, 0)) for p in plans.values()) + " |")
    return lines


def report_lines(search, meta, scoring, study, best, signal=()) -> list[str]:
    metric = search._data.main_metric
    imp = meta["importance"]
    lines = ["## Super-network", "",
             f"- {meta['steps']} steps ({meta['seconds']:.1f} s, {meta['step_time_s']:.3f} s/step"
             f"{', reused from supernet.safetensors' if meta.get('reused') else ''}); training loss "
             f"{meta['loss_first']:.4f} (first 10) -> {meta['loss_last']:.4f} (last 10)",
             f"- trained importance: AdaLoRA sensitivity, normalised within kind "
             f"({search.cfg.normalise}); {meta['never_trained']} of {meta['n_candidates']} candidates "
             f"were never in a sampled sub-plan and got their kind's median", ""]
    scored = scoring.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fixed = [t for t in scored if t.user_attrs.get("origin") != "sampled"]
    lines += ["## Plans on the shared weights", "",
              f"{len(scored)} plans scored by held-out loss on {search.n_score_rows} held-out rows "
              f"(inference only). Fixed plans:", "",
              f"| plan | params | held-out loss | held-out {metric} | composition |", "|---|---:|---:|---:|---|"]
    for t in sorted(fixed, key=lambda t: t.value) + sorted(
            (t for t in scored if t.user_attrs.get("origin") == "sampled"), key=lambda t: t.value)[:3]:
        p = Plan.from_dict(t.user_attrs[PLAN_ATTR])
        m = t.user_attrs.get("metrics", {})
        lines.append(f"| {t.user_attrs['origin']} #{t.number} | {p.trainable_params:,} | {t.value:.4f} | "
                     f"{_fmt(m.get(metric))} | {dict(composition(p))} |")
    by_origin = {t.user_attrs["origin"]: t for t in fixed}
    comp = {o: composition(Plan.from_dict(by_origin[o].user_attrs[PLAN_ATTR]))
            for o in ("importance plan, kind medians equal", "importance plan", "proxy plan") if o in by_origin}
    if best is not None and PLAN_ATTR in best.user_attrs:
        comp["chosen plan"] = composition(Plan.from_dict(best.user_attrs[PLAN_ATTR]))
    lines += ["", "### Why this composition", "",
              "Normalised within kind, every kind's median candidate scores 1 whatever its size, so "
              "the knapsack alone takes the kind with the most importance per parameter (\"kind "
              "medians equal\"). The search's importance plan rescales each kind to the same "
              "importance per parameter, and Optuna's kind weights, judged by held-out loss on the "
              "shared weights, decide between kinds. Modules per kind in each plan:", ""]
    lines += kind_table(search.candidates, imp, comp)
    trials = [t for t in study.get_trials(deepcopy=False) if "rung" in t.user_attrs]
    if trials:
        lines += ["", "## Finalists (short real trials, warm-started from the shared weights)", "",
                  "Successive halving on held-out loss over the same rows; a finalist is cut only "
                  "when worse than the leader beyond noise (paired test). Uniform-LoRA baselines "
                  "(at the budget, the plan's size limit) compete as finalists: if one wins, or a "
                  "searched plan leads it by no more than the noise, the search returns it, a "
                  "valid plan.", "",
                  f"| finalist | rung | steps | lr | params | shared loss | held-out loss | "
                  f"held-out {metric} |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for t in sorted(trials, key=lambda t: (-t.user_attrs["rung"], t.value if t.value is not None else 9e9)):
            m = t.user_attrs.get("metrics", {})
            lines.append(f"| {t.user_attrs['cid']}{' **chosen**' if best is not None and t.number == best.number else ''} "
                         f"| {t.user_attrs['rung']} | {t.user_attrs['steps']} | {t.user_attrs['lr']:.1e} | "
                         f"{t.user_attrs['trainable_params']:,} | {t.user_attrs['shared_loss']:.4f} | "
                         f"{_fmt(t.value)} | {_fmt(m.get(metric))} |")
    lines.append("")
    return lines + list(signal)
