"""What does more search buy?  The default search at several --cost-budget values, its plan
trained at the rate it returned, against the best uniform LoRA baseline at its best rate: the
gain over that baseline against the search's measured cost, per task, as a table and a plot.

Protocol: glue.py's search-vs-baselines (SST-2's 8,000-row subset for 1 epoch, MRPC's whole train
for 3; batch 16, max length 128, batches grouped by length; the grid 5e-4, 1e-3, 2e-3, 5e-3), every
head reading the mean of the tokens (--pooling).  Per task, cost budget and seed: one `more-search`
at that seed (default settings at each of --budgets, --cost-budget and --lr-test), its plan
trained on all of train at the plan's own rate, scored on dev.  Baselines, sized to the parameter budget (never
above it, so never smaller than a plan that fits): PEFT LoRA on query,value, on the widest
placement and on the MLP (nas.baselines), each at the grid's pick on held-out train, at the same
seeds.  The best baseline is the one with the best dev mean (chosen on dev: it favours the
baselines); gains are paired by seed.  Runs keyed by content: a plan two searches return trains
once.  Per-run records in benchmarks/.cache/runs/search_budget_sweep/, packed into
benchmarks/results/runs/search_budget_sweep.tar.xz.  On 2 CPU cores: ~2 min per SST-2 run, ~8 min
per MRPC run (model_cost.md), plus the searches (their cost budget x one run).

    python benchmarks/search_budget_sweep.py --tasks sst2 --cost-budgets 0.25 0.5 1 2 --seeds 0 1 2
    python benchmarks/search_budget_sweep.py --report-only
    # the comparison at the default cost budget (issue 31 item 5): both budgets, 5 seeds
    python benchmarks/search_budget_sweep.py --tasks sst2 mrpc --budgets 0.1% 0.02% --cost-budgets 0.5 \
        --seeds 0 1 2 3 4 --out benchmarks/results/search_vs_baselines_mean
    # MPNet-base (pip install -e '.[mpnet]'), one cost budget, the baselines at 2e-3 untested: ~2.5 h
    python benchmarks/search_budget_sweep.py --model mpnet --cost-budgets 0.5 --lrs 2e-3
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from glue import RESULTS, SEARCH_VS_BASELINES  # noqa: E402
from _glue_bench import Bench, grid_pick  # noqa: E402
from _glue_methods import MODEL, peft_spec  # noqa: E402
from _glue_report import _ms  # noqa: E402
from _glue_search import content_spec, placement_lora, run_or_load_search  # noqa: E402
from _runs_archive import publish, runs_dir  # noqa: E402
from placement_ceiling import paired_p  # noqa: E402

STUDY = "search_budget_sweep"
BASELINES = {"PEFT q,v": "qv", "widest": "widest", "MLP": "mlp"}  # label -> nas.baselines placement
GOAL = 1.0  # points over the best baseline: the gain the issue aims at


def search_folder(model: str, budget: str, cost_budget: float, lr_test: str, seed: int) -> str:
    return f"search_{'' if model == MODEL else model + '_'}{budget}_x{cost_budget:g}_lr-{lr_test}_s{seed}"


def searched(bench: Bench, task: str, budget: str, cost_budget: float, lr_test: str, seed: int,
             run_missing: bool) -> dict | None:
    """One search and its plan's dev score at the plan's own rate; None while not run."""
    from nas import Plan

    ctx = bench.ctx(task)
    folder = search_folder(bench.proto.model, budget, cost_budget, lr_test, seed)
    if not run_missing and not (ctx.runs_dir / folder / "glue_search.json").is_file():
        return None
    rec = run_or_load_search(ctx, budget, "supernet", {"seed": seed, "lr_test": lr_test, "cost_budget": cost_budget},
                             folder)
    plan = Plan.from_dict(rec["plan"])
    lr, spec = float(plan.training["lr"]), content_spec(plan)
    final, _ = bench.run(task, "final", spec, lr, seed, run_missing)
    if final is None:
        return None
    prov = plan.provenance or {}
    return {"task": task, "budget": budget, "cost_budget": cost_budget, "seed": seed, "plan": spec.label,
            "params": plan.trainable_params,
            "origin": prov.get("origin", "searched"), "lr": lr, "dev": 100 * final["score"],
            "multiple": (prov.get("search_cost") or {}).get("multiple")}


def baselines(bench: Bench, task: str, budget: str, seeds: list[int], run_missing: bool) -> dict[str, dict]:
    """label -> {"spec", "lr", "dev": {seed: score}} for each baseline whose runs are all there."""
    from nas.budget import parse_budget

    ctx = bench.ctx(task)
    limit = parse_budget(budget, ctx.base_params)
    out = {}
    for label, placement in BASELINES.items():
        rank, where, targets = placement_lora(ctx, limit, placement)
        spec = peft_spec(ctx, rank, where, targets, budget=budget)
        lr, _ = grid_pick(bench, task, spec, run_missing)
        if lr is None:
            continue
        dev = {s: bench.run(task, "final", spec, lr, s, run_missing)[0] for s in seeds}
        if all(dev.values()):
            out[label] = {"spec": spec.label, "params": spec.info["adapter_params"], "lr": lr,
                          "dev": {s: 100 * r["score"] for s, r in dev.items()}}
    return out


def cells(rows: list[dict], bases: dict[tuple[str, str], dict[str, dict]]) -> list[dict]:
    """Per (task, budget, cost budget): the searched plans' dev against the best baseline of the
    task at that budget (by dev mean), paired by seed."""
    out = []
    for key in dict.fromkeys((r["task"], r["budget"]) for r in rows):
        if not bases.get(key):
            continue
        best = max(bases[key], key=lambda k: statistics.mean(bases[key][k]["dev"].values()))
        ref = bases[key][best]["dev"]
        mine = [r for r in rows if (r["task"], r["budget"]) == key]
        for cb in sorted({r["cost_budget"] for r in mine}):
            sub = [r for r in mine if r["cost_budget"] == cb and r["seed"] in ref]
            if not sub:
                continue
            gaps = [r["dev"] - ref[r["seed"]] for r in sub]
            mults = [r["multiple"] for r in sub if r["multiple"] is not None]
            out.append({"task": key[0], "budget": key[1], "cost_budget": cb, "n": len(sub), "best": best,
                        "cost": statistics.mean(mults) if mults else float("nan"),
                        "dev": statistics.mean(r["dev"] for r in sub),
                        "dev_sd": statistics.stdev(r["dev"] for r in sub) if len(sub) > 1 else float("nan"),
                        "gain": statistics.mean(gaps), "gain_sd": statistics.stdev(gaps) if len(gaps) > 1 else
                        float("nan"), "p": paired_p(gaps), "plans": sorted({r["plan"] for r in sub})})
    return out


def report(rows: list[dict], bases: dict[tuple[str, str], dict[str, dict]], command: str, proto,
           lr_test: str) -> str:
    lines = ["# The default search against the best uniform LoRA baseline, per cost budget", "", f"`{command}`", "",
             f"Packaged {proto.model}, protocol {proto.name}, the default search with `--lr-test "
             f"{lr_test}` at each `--cost-budget`; each plan trained at the rate it returned.  Baselines at the "
             f"budget, each at the grid's pick ({', '.join(f'{x:g}' for x in proto.lr_grid)}) on held-out train "
             "(a grid of one rate: that rate, untested).  "
             "Dev score x100, mean ± std over seeds; gain paired by seed against the best baseline (by dev mean).",
             "", "## Baselines", "", "| task | budget | baseline | spec | params | lr (grid pick) | dev |",
             "|---|---|---|---|---:|---:|---:|"]
    for (task, budget), bs in bases.items():
        for label, b in bs.items():
            lines.append(f"| {task} | {budget} | {label} | {b['spec']} | {b['params']:,} | {b['lr']:g} | "
                         f"{_ms(b['dev'].values(), scale=1.0)} |")
    lines += ["", "## The search at each cost budget", "",
              "| task | budget | --cost-budget | measured cost (x one training) | seeds | plans | dev | "
              "best baseline | gain | p |", "|---|---|---:|---:|---:|---|---:|---|---:|---:|"]
    for c in cells(rows, bases):
        lines.append(f"| {c['task']} | {c['budget']} | {c['cost_budget']:g} | {c['cost']:.2f} | {c['n']} | "
                     f"{', '.join(c['plans'])} | {_pm(c['dev'], c['dev_sd'], '.1f')} | {c['best']} | "
                     f"{_pm(c['gain'], c['gain_sd'], '+.2f')} | {c['p']:.2f} |")
    lines += ["", "Per search: task, budget, cost budget, seed, plan, params, origin, lr, measured cost, dev.", "",
              "| task | budget | --cost-budget | seed | plan | params | origin | lr | cost | dev |",
              "|---|---|---:|---:|---|---:|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["task"], r["budget"], r["cost_budget"], r["seed"])):
        mult = f"{r['multiple']:.2f}x" if r["multiple"] is not None else "?"
        lines.append(f"| {r['task']} | {r['budget']} | {r['cost_budget']:g} | {r['seed']} | {r['plan']} | "
                     f"{r['params']:,} | {r['origin']} | {r['lr']:.3g} | {mult} | {r['dev']:.1f} |")
    return "\n".join(lines) + "\n"


def _pm(mean: float, sd: float, fmt: str) -> str:
    """mean ± sd, or the mean alone with one seed (no spread to show)."""
    return f"{mean:{fmt}}" + (f" ± {sd:{fmt.lstrip('+')}}" if sd == sd else " (n=1)")


def plot(cs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in dict.fromkeys((c["task"], c["budget"]) for c in cs):
        sub = [c for c in cs if (c["task"], c["budget"]) == key]
        ax.errorbar([c["cost"] for c in sub], [c["gain"] for c in sub], yerr=[c["gain_sd"] for c in sub],
                    marker="o", capsize=3, label=" ".join(key))
    ax.axhline(0, color="grey", lw=1)
    ax.axhline(GOAL, color="grey", lw=1, ls="--", label=f"goal +{GOAL:g}")
    ax.set_xscale("log")
    ax.set_xlabel("search cost (x one training, measured)")
    ax.set_ylabel("dev gain over the best baseline (points)")
    ax.set_title("What more search buys (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from nas.search import SearchConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["sst2"], choices=SEARCH_VS_BASELINES.tasks)
    ap.add_argument("--cost-budgets", nargs="+", type=float, default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", default=["0.1%"], help="trainable-parameter budgets (more-search --budget)")
    ap.add_argument("--lr-test", default=SearchConfig().lr_test, help="the searches' --lr-test (default: the search's)")
    ap.add_argument("--report-only", action="store_true", help="train nothing: report the saved runs")
    ap.add_argument("--out", type=Path, help="output prefix (default: results/search_budget_sweep[_MODEL])")
    ap.add_argument("--pooling", default="mean", choices=["cls", "mean"], help="what every task head reads")
    ap.add_argument("--model", default=MODEL, help="a packaged model (minilm, mpnet)")
    ap.add_argument("--lrs", nargs="+", type=float, help="the baselines' grid (default: the protocol's); one rate: "
                    "no selection runs")
    args = ap.parse_args(argv)
    proto = replace(SEARCH_VS_BASELINES, pooling=args.pooling, model=args.model,
                    lr_grid=tuple(args.lrs or SEARCH_VS_BASELINES.lr_grid))
    out = args.out or RESULTS / (STUDY + ("" if args.model == MODEL else f"_{args.model}"))
    import torch

    torch.set_num_threads(2)
    bench = Bench(proto, [], runs_dir(STUDY), threads=2)
    run = not args.report_only
    rows, bases = [], {}
    for task, budget in ((t, b) for t in args.tasks for b in args.budgets):
        bases[task, budget] = baselines(bench, task, budget, args.seeds, run)
        for cb in args.cost_budgets:
            for seed in args.seeds:
                row = searched(bench, task, budget, cb, args.lr_test, seed, run)
                if row is not None:
                    rows.append(row)
                    print(f"{task} {budget} x{cb:g} seed {seed}: {row['plan']} at lr {row['lr']:.3g} -> "
                          f"{row['dev']:.1f} (search {row['multiple'] or float('nan'):.2f}x)", flush=True)
    argv_text = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    text = report(rows, bases, f"python benchmarks/search_budget_sweep.py {argv_text}".strip(), proto, args.lr_test)
    cs = cells(rows, bases)
    if cs:
        plot(cs, out.with_suffix(".png"))
    publish(STUDY, text, out.with_suffix(".md"), args.report_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
