"""What a person looks at after a search: report.md and plots (Pareto front, proxy vs trial,
per-layer allocation)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import TrialState

from search_spaces import count_params
from search_spaces.anatomy import ModelLayout
from search_spaces.shortcuts import SHORTCUT_DEFAULTS, shortcut_params
from search_spaces.space import choice_label

from ..io import atomic_write_text
from ..plan import Plan
from .trials import trial_rank


@dataclass
class SearchFacts:
    """What the report says about the search besides its trials and result."""

    out: Path
    layout: ModelLayout
    metric: str  # the task's main metric, scored on the held-out part of train
    budget_spec: str
    budget: int
    base_params: int
    space: str
    n_candidates: int
    proxy: str
    allocation: str


def pareto_front(points: list[dict]) -> list[dict]:
    """Non-dominated points: fewer parameters and a lower held-out loss."""
    front, best = [], float("inf")
    for p in sorted(points, key=lambda p: (p["params"], p["value"])):
        if p["value"] < best:
            front.append(p)
            best = p["value"]
    return front


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def allocation_table(plan: Plan, layout) -> tuple[list[str], list[list[str]]]:
    """Rows per layer: the choice on each role, then the shortcuts that are on."""
    roles = layout.roles
    cells = defaultdict(dict)
    for m in layout.modules:
        c = plan.modules.get(m.name)
        cells[m.layer][m.role] = choice_label(c) if c else "·"
    for key in plan.shortcuts:
        layer, _, kind = key.partition(".")
        cells[int(layer)].setdefault("shortcuts", []).append(kind)
    header = ["layer"] + roles + ["shortcuts"]
    rows = [[str(i)] + [cells[i].get(r, "·") for r in roles] + [", ".join(cells[i].get("shortcuts", [])) or "·"]
            for i in range(layout.num_layers)]
    return header, rows


def plot_allocation(plan: Plan, layout, path: Path, title: str) -> None:
    import numpy as np

    plt = _plt()
    roles = layout.roles + ["shortcuts"]
    grid = np.zeros((layout.num_layers, len(roles)))
    labels = [["" for _ in roles] for _ in range(layout.num_layers)]
    for m in layout.modules:
        c = plan.modules.get(m.name)
        if c:
            hp = {k: v for k, v in c.items() if k not in ("type", "enabled")}
            j = roles.index(m.role)
            grid[m.layer, j] = count_params(c["type"], m.d_in, m.d_out, **hp)
            labels[m.layer][j] = choice_label(c)
    for key, hp in plan.shortcuts.items():
        layer, _, kind = key.partition(".")
        j = roles.index("shortcuts")
        grid[int(layer), j] += shortcut_params(layout.hidden_size, **{**SHORTCUT_DEFAULTS, **hp})
        labels[int(layer)][j] = (labels[int(layer)][j] + " " + kind).strip()
    fig, ax = plt.subplots(figsize=(1.6 * len(roles) + 2, 0.6 * layout.num_layers + 1.5))
    im = ax.imshow(grid, cmap="Blues", aspect="auto")
    dark = grid.max() * 0.6 if grid.max() > 0 else 1
    for i in range(layout.num_layers):
        for j in range(len(roles)):
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] > dark else "black")
    ax.set_xticks(range(len(roles)), roles)
    ax.set_yticks(range(layout.num_layers), [f"layer {i}" for i in range(layout.num_layers)])
    fig.colorbar(im, ax=ax, label="trainable parameters")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(facts: SearchFacts, study, res) -> list[dict]:
    out: Path = facts.out
    trials = study.get_trials(deepcopy=False)
    points = [{"trial": t.number, "params": t.user_attrs["trainable_params"], "value": t.value,
               "proxy": t.user_attrs.get("proxy_score", float("nan"))}
              for t in trials if t.state == TrialState.COMPLETE and "trainable_params" in t.user_attrs]
    front = pareto_front(points)
    metric = facts.metric
    plt = _plt()

    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.scatter([p["params"] for p in points], [p["value"] for p in points], c="tab:gray",
                   label="trials")
        ax.plot([p["params"] for p in front], [p["value"] for p in front], "o-", c="tab:red",
                label="Pareto front")
    ax.axvline(facts.budget, ls="--", c="k", lw=1, label="budget")
    ax.set_xlabel("trainable parameters (adapters + shortcuts)")
    ax.set_ylabel("held-out loss")
    ax.legend()
    ax.set_title("params vs score")
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.scatter([p["proxy"] for p in points], [p["value"] for p in points])
        for p in points:
            ax.annotate(str(p["trial"]), (p["proxy"], p["value"]), fontsize=7)
    ax.set_xlabel(f"summed proxy score of the plan ({facts.proxy})")
    ax.set_ylabel("held-out loss after the short trial")
    ax.set_title("proxy vs trial")
    fig.tight_layout()
    fig.savefig(out / "proxy_vs_trial.png", dpi=120)
    plt.close(fig)

    plot_allocation(res.plan, facts.layout, out / "allocation.png",
                    f"chosen plan: {res.plan.trainable_params:,} params")

    lines = [
        "# more-search report", "",
        f"- model: `{res.plan.model['name_or_path']}` ({facts.layout.family}, "
        f"{facts.base_params:,} base parameters)",
        f"- task: `{res.plan.task.get('name')}`; plans are ranked by held-out loss on part of train "
        f"({metric} beside it); strategy: {res.plan.provenance.get('strategy', '-')}",
        f"- budget: {facts.budget_spec} = {facts.budget:,} parameters (adapters + shortcuts; "
        f"the task head is not counted)",
        f"- space: `{facts.space}` ({facts.n_candidates} candidates); proxy: "
        f"`{facts.proxy}`; allocation: {facts.allocation}",
        f"- chosen plan: trial {res.plan.provenance.get('trial', '-')}, "
        f"{res.plan.trainable_params:,} parameters, held-out loss {res.best_value:.4f} "
        f"({metric} {res.plan.provenance.get('heldout_metrics', {}).get(metric, float('nan')):.4f}), "
        f"lr {res.plan.training.get('lr'):.2e}, origin: {res.plan.provenance.get('origin', '-')}",
        f"- trials: {res.n_complete} complete, {res.n_pruned} pruned, {res.n_failed} failed",
    ]
    c = res.cost
    if c:
        lines.append(
            f"- search cost: {c['multiple_cpu']:.2f}x one full training run of the plan in CPU time, "
            f"{c['multiple']:.2f}x in wall time (estimates: {c['search_cpu_seconds']:.0f} CPU s / "
            f"{c['search_seconds']:.0f} s of search, setup excluded, over {c['full_run_steps']} steps x "
            f"{c['plan_step_cpu_s']:.3f} CPU s / {c['plan_step_time_s']:.3f} s per plan step measured "
            f"in its short trial, first step excluded)"
            + (f"; planned at most {c['planned_multiple']:.2f}x" if "planned_multiple" in c else ""))
    lines += [
        "", "## Time per stage", "", "Cost in full runs of the plan: planned before the stage ran, spent as "
        "measured (CPU time, as above); the lr stage also gets what the finalists did not spend.", "",
        "| stage | seconds | CPU seconds | planned (full runs) | spent (full runs) |", "|---|---:|---:|---:|---:|",
    ]
    cpu, by = res.cost.get("stage_cpu_seconds", {}), res.cost.get("stages", {})
    num = lambda v, f: "-" if v is None or v != v else format(v, f)  # noqa: E731  (None, NaN: -)
    lines += [f"| {k} | {v:.1f} | {num(cpu.get(k), '.1f')} | {num(by.get(k, {}).get('planned'), '.3f')} | "
              f"{num(by.get(k, {}).get('spent_cpu'), '.3f')} |" for k, v in res.stage_seconds.items()]
    header, rows = allocation_table(res.plan, facts.layout)
    lines += ["", "## Chosen plan per layer", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=trial_rank, reverse=True)
    lines += ["", "## Top trials", "", f"| trial | held-out loss | held-out {metric} | params | lr | origin |",
              "|---:|---:|---:|---:|---:|---|"]
    for t in ranked[:10]:
        m = t.user_attrs.get("metrics", {}).get(metric, float("nan"))
        lr = t.user_attrs.get("lr", t.params.get("lr", float("nan")))
        lines.append(f"| {t.number} | {t.value:.4f} | {m:.4f} | {t.user_attrs.get('trainable_params', 0):,} | "
                     f"{lr:.2e} | {t.user_attrs.get('cid', t.user_attrs.get('origin', 'sampled'))} |")
    lines += [""] + list(res.notes)
    lines += ["", "## Pareto front (params vs held-out loss)", "", "| trial | params | loss |",
              "|---:|---:|---:|"]
    lines += [f"| {p['trial']} | {p['params']:,} | {p['value']:.4f} |" for p in front]
    lines += ["", "Plots: `pareto.png`, `proxy_vs_trial.png`, `allocation.png`. The study stays in "
              "its storage: `optuna-dashboard " + str(res.plan.provenance.get("storage")) + "`.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return front
