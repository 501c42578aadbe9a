"""The room a search has: hand-built plans against uniform LoRA at the same size, the same lr and
the same seeds (the SST-2 or MRPC setting of glue.py's search-vs-baselines protocol, packaged
MiniLM or MPNet-base), at fixed learning rates.

A search can only pay for itself if some plan of its space beats the best uniform LoRA at the same
size by more than the seed noise.  This trains, in full, a few plans an engineer would try (other
placements, depth profiles, MoRe, SURM kinds, (IA)^3, HeteroLoRA shortcuts, the FFN) and the uniform
placements, at 2e-3 (on this model it beats 5e-4 for every method) and, at the small budget, also
5e-3 (which small adapters prefer), plus any plan files given with --plan (e.g. a search's).  With
several --lrs, the report also sets every plan at its own best lr.
Per seed, every plan starts from the same head and data order, so differences are paired by seed.

    python benchmarks/placement_ceiling.py --curves 0.1%@2e-3     # both budgets, 3 seeds, curves
    python benchmarks/placement_ceiling.py --plan search=out/plan.json --budgets 0.1%
    python benchmarks/placement_ceiling.py --report-only
    # MPNet-base (12 layers; pip install -e '.[mpnet]'): its own plans, mean pooling, ~13.5 min a run
    python benchmarks/placement_ceiling.py --model mpnet --pooling mean --budgets 0.1% --threads 2
    python benchmarks/placement_ceiling.py --model mpnet --pooling mean --budgets 0.1% --threads 2 \
        --only 'MoRe|widest' --lrs 0.008  # MoRe at its own rate (about 4x LoRA's on MiniLM)

Writes benchmarks/results/placement_ceiling[_MODEL][_TASK].{md,csv,png}; each run is kept as a JSON under
--runs-dir (skipped on a rerun), as benchmarks/glue.py keeps its runs: by default in
benchmarks/.cache/runs/placement_ceiling/, packed into benchmarks/results/runs/placement_ceiling.tar.xz
at the end of a run that trains (--curves caches its curves there too; --report-only only reads).
Each report names its command under its title: add --report-only to rewrite it from the kept runs.
Time on 2 CPU cores (1 thread, the kept runs' median): ~1 min per SST-2 run (500 steps), ~6.5 min
per MRPC run (690 steps); every plan of the default budgets at the default lrs and 3 seeds is ~130
SST-2 runs (~2 h).
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import shlex
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from glue import SEARCH_VS_BASELINES  # noqa: E402
from _glue_bench import Bench  # noqa: E402
from _glue_methods import MODEL, head_params, plan_spec  # noqa: E402
from _runs_archive import pack, runs_dir  # noqa: E402
from nas.options import float_list, int_list  # noqa: E402
from _ceiling_curves import curve_lines, curves  # noqa: E402
from _ceiling_plans import LRS, NAMES, PLANS  # noqa: E402
from search_spaces.shortcuts import SHORTCUT_KINDS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TASKS = {"sst2": "SST-2", "mrpc": "MRPC"}  # the search-vs-baselines protocol's tasks
SEEDS = (0, 1, 2)
# The plans of an earlier CPU run of the search-vs-baselines searches (before the search checked
# that its trials had taken off), trained beside the hand-built ones; kept in this study's archive.
def searched(task: str) -> dict[str, Path]:
    early = runs_dir("placement_ceiling") / "early_search" / task
    return {f"search plan before the take-off check, {b}": early / f"search_supernet_{b}" / "plan.json"
            for b in PLANS[MODEL]}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48]


def rules_plan(rules) -> callable:
    def choice(m):
        return next((c for roles, layers, c in rules if m.role in roles and m.layer in layers), None)
    return choice


def specs(bench: Bench, task: str, extra: dict[str, Path], budgets, only: str = "") -> dict[str, list]:
    """budget -> [(name, Spec, params)] of the plans whose name matches ``only``; --plan files
    join the budget their size fits."""
    from nas import Plan

    ctx = bench.ctx(task)
    out = {}
    for budget in budgets:
        rows = []
        for name, rules in PLANS[bench.proto.model][budget].items():
            if not re.search(only, name):
                continue
            pick = rules_plan(rules)
            mods = {m.name: pick(m) for m in ctx.layout.modules if pick(m)}
            cuts = {f"{layer}.{kind}": c for roles, layers, c in rules for kind in roles
                    if kind in SHORTCUT_KINDS for layer in layers}  # HeteroLoRA shortcuts
            spec = plan_spec(slug(name), mods, cuts)
            rows.append((name, spec, Plan.from_dict(spec.payload["plan"]).count_params(ctx.layout)))
        out[budget] = rows
    for name, path in extra.items():
        plan = Plan.load(path)
        budget = (plan.budget or {}).get("spec")
        if budget not in out:
            raise SystemExit(f"--plan {name}={path}: its budget {budget!r} is not one of {list(out)}")
        spec = plan_spec(slug(name), plan.modules, plan.shortcuts, plan.budget.get("params"))
        out[budget].append((name, spec, plan.count_params(ctx.layout)))
    return out


def collect(bench: Bench, task: str, table: dict, seeds, lrs: dict, run_missing: bool) -> list[dict]:
    rows = []
    for seed in seeds:  # seed-major: an interrupted run still leaves every plan's first seeds
        for (budget, plans), lr in ((bp, lr) for bp in table.items() for lr in lrs[bp[0]]):
            for name, spec, params in plans:
                rec, cached = bench.run(task, "final", spec, lr, seed, run_missing=run_missing)
                if rec is None:
                    continue
                rows.append({"budget": budget, "plan": name, "params": params, "lr": lr, "seed": seed,
                             "accuracy": rec["score"], "dev_loss": rec["metrics"].get("eval_loss"),
                             "wall_s": round(rec.get("wall_s", 0.0), 1), "steps": rec["steps"],
                             "dev_rows": rec["n_eval"]})
                if not cached:
                    print(f"{budget:>6} lr {lr:g} {name:48s} s{seed} acc {rec['score']:.4f}", flush=True)
    return rows


def paired_p(diffs: list[float]) -> float:
    """Two-sided p of the paired t-test that the mean per-seed difference is 0 (nan below 3 seeds
    or with no spread)."""
    if len(diffs) < 3 or statistics.stdev(diffs) == 0:
        return float("nan")
    from scipy import stats

    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def per_seed(acc: dict, budget: str, lr: float, plan: str) -> dict[int, float]:
    """{seed: dev accuracy} of one plan at one lr, from summarize's (budget, lr, plan, seed) map."""
    return {s: a for (b, r, n, s), a in acc.items() if (b, r, n) == (budget, lr, plan)}


def mean_sd(d: list[float]) -> tuple[float, float]:
    return (statistics.fmean(d) if d else float("nan"), statistics.stdev(d) if len(d) > 1 else float("nan"))


def summarize(rows: list[dict], table: dict) -> list[dict]:
    """Per plan: mean ± std over seeds, and the paired difference to the budget's reference, to
    its best uniform plan and to the widest uniform plan (mean ± std of the per-seed differences,
    and the paired t-test's two-sided p against the widest)."""
    acc = {(r["budget"], r["lr"], r["plan"], r["seed"]): 100 * r["accuracy"] for r in rows}
    out = []
    for (budget, plans), lr in ((bp, lr) for lr in dict.fromkeys(r["lr"] for r in rows) for bp in table.items()):
        def seeds_of(name):
            return per_seed(acc, budget, lr, name)

        uniforms = [n for n, _, _ in plans if n.startswith("uniform") and seeds_of(n)]
        best_uniform = max(uniforms, key=lambda n: statistics.fmean(seeds_of(n).values()), default=None)
        widest = next((n for n in uniforms if "the widest" in n), None)
        for name, _, params in plans:
            mine = seeds_of(name)
            row = {"budget": budget, "lr": lr, "plan": name, "params": params, "n": len(mine),
                   "mean": statistics.fmean(mine.values()) if mine else float("nan"),
                   "std": statistics.stdev(mine.values()) if len(mine) > 1 else float("nan")}
            diffs = {key: [mine[s] - a for s, a in seeds_of(ref).items() if s in mine] if ref else []
                     for key, ref in (("vs_ref", plans[0][0]), ("vs_best_uniform", best_uniform),
                                      ("vs_widest", widest))}
            for key, d in diffs.items():
                row[key] = mean_sd(d)
            row["p_vs_widest"] = paired_p(diffs["vs_widest"])
            row["best_uniform"] = best_uniform
            out.append(row)
    return out


def at_best_lr(summary: list[dict], rows: list[dict]) -> list[dict]:
    """Per budget and plan, the lr with its highest mean dev accuracy (among the lrs run with the
    most seeds), and the per-seed difference to the widest uniform plan at its own best lr.  Dev
    picks the lr here, so every plan's figure is a ceiling, not a protocol result."""
    acc = {(r["budget"], r["lr"], r["plan"], r["seed"]): 100 * r["accuracy"] for r in rows}
    best = {}
    for r in summary:
        key, cur = (r["budget"], r["plan"]), best.get((r["budget"], r["plan"]))
        if r["n"] and (cur is None or (r["n"], r["mean"]) > (cur["n"], cur["mean"])):
            best[key] = r
    out = []
    for (budget, plan), r in best.items():
        wide = next((w for (b, n), w in best.items() if b == budget and "the widest" in n), None)
        ref = per_seed(acc, budget, wide["lr"], wide["plan"]) if wide else {}
        d = [a - ref[s] for s, a in per_seed(acc, budget, r["lr"], plan).items() if s in ref]
        out.append({**r, "vs_widest": mean_sd(d), "p_vs_widest": paired_p(d)})
    return out


def pm(mu_sd: tuple[float, float]) -> str:
    """A paired difference as "+m ± s", "—" where there is nothing to pair with."""
    mu, sd = mu_sd
    return "—" if math.isnan(mu) else f"{mu:+.1f}" + ("" if math.isnan(sd) else f" ± {sd:.1f}")


def best_lr_lines(summary: list[dict], rows: list[dict]) -> list[str]:
    if len({r["lr"] for r in summary}) < 2:
        return []
    best = at_best_lr(summary, rows)
    lines = ["## Each plan at its best lr (picked on dev: a ceiling for every plan alike)", "",
             "| budget | plan | params | best lr | dev accuracy | vs the widest at its best lr (paired p) |",
             "|---|---|---:|---:|---|---:|"]
    for r in sorted(best, key=lambda r: (-float(r["budget"][:-1]), -r["mean"])):
        p_w = f" ({r['p_vs_widest']:.3f})" if math.isfinite(r["p_vs_widest"]) else ""
        lines.append(f"| {r['budget']} | {r['plan']} | {r['params']:,} | {r['lr']:g} | {r['mean']:.1f} ± "
                     f"{r['std']:.1f} (n={r['n']}) | {pm(r['vs_widest'])}{p_w} |")
    return lines + [""]


def write(summary: list[dict], rows: list[dict], prefix: Path, task: str, command: str, extra_lines=(), *,
          title: str = "Placement ceiling: hand-built plans vs uniform LoRA at the same size",
          script: str = "benchmarks/placement_ceiling.py", model: str = MODEL, head: int = 770) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(f"{prefix}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    name, p = TASKS[task], SEARCH_VS_BASELINES
    n_rows = p.train_rows.get(task)
    data = f"{name}'s {n_rows:,}-row subset" if n_rows else f"{name}'s full train set"
    lines = [f"# {title} ({name})", "", f"`python {script} {command}`: packaged {NAMES[model]}, {data} for "
             f"{p.epochs_for(task):g} epoch(s) ({rows[0]['steps']} steps), batch {p.batch_size}, max length "
             f"{p.max_length}, every plan at each lr, seeds {', '.join(map(str, sorted({r['seed'] for r in rows})))}; "
             f"dev accuracy ({rows[0]['dev_rows']} rows). Differences are paired by seed (same head init and "
             f"data order); parameters exclude the {head:,}-parameter head.", ""]
    cells = sorted(dict.fromkeys((r["budget"], r["lr"]) for r in summary), key=lambda c: (-float(c[0][:-1]), c[1]))
    for budget, lr in cells:
        sub = [r for r in summary if (r["budget"], r["lr"]) == (budget, lr) and r["n"]]
        if not sub:
            continue
        ref = next(r["plan"] for r in summary if r["budget"] == budget)  # the table's first plan
        lines += [f"## Budget {budget}, lr {lr:g}", "",
                  f"| plan | params | dev accuracy | vs {ref.split(' (')[0]} | vs best uniform "
                  f"| vs the widest (paired p) |", "|---|---:|---|---:|---:|---:|"]
        for r in sorted(sub, key=lambda r: -r["mean"]):
            p_w = f" ({r['p_vs_widest']:.3f})" if math.isfinite(r["p_vs_widest"]) else ""
            lines.append(f"| {r['plan']} | {r['params']:,} | {r['mean']:.1f} ± {r['std']:.1f} (n={r['n']}) "
                         f"| {pm(r['vs_ref'])} | {pm(r['vs_best_uniform'])} | {pm(r['vs_widest'])}{p_w} |")
        lines += ["", f"Best uniform: {sub[0]['best_uniform'] or 'none trained at this lr'}.", ""]
    Path(f"{prefix}.md").write_text("\n".join(lines + list(extra_lines)))
    # One panel per (budget, lr), and with several lrs one per budget of each plan at its best lr.
    best = at_best_lr(summary, rows) if len({r["lr"] for r in summary}) > 1 else []
    panels = [(f"budget {b}, each plan at its best lr", [r for r in best if r["budget"] == b])
              for b in dict.fromkeys(r["budget"] for r in best)]
    panels += [(f"budget {b}, lr {lr:g}", [r for r in summary if (r["budget"], r["lr"]) == (b, lr) and r["n"]])
               for b, lr in cells]
    panels = [(t, sorted(sub, key=lambda r: r["mean"])) for t, sub in panels if sub]
    ncol = min(2, len(panels))
    fig, axes = plt.subplots(-(-len(panels) // ncol), ncol, figsize=(7 * ncol, 4.5 * -(-len(panels) // ncol)),
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, sub) in zip(axes.flat, panels):
        ax.errorbar([r["mean"] for r in sub], range(len(sub)), xerr=[r["std"] for r in sub], fmt="o")
        for i, r in enumerate(sub):
            pts = [100 * x["accuracy"] for x in rows if (x["budget"], x["lr"], x["plan"]) == (r["budget"], r["lr"], r["plan"])]
            ax.scatter(pts, [i] * len(pts), s=8, alpha=0.5, color="gray")
        ax.set_yticks(range(len(sub)), [r["plan"] + (f" ({r['lr']:g})" if title.endswith("best lr") else "")
                                        for r in sub], fontsize=7)
        ax.set_xlabel(f"{name} dev accuracy (%)")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(f"{prefix}.png", dpi=120, metadata={"Software": None})  # the same plot, the same bytes
    print(Path(f"{prefix}.md").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--task", choices=TASKS, default="sst2")
    ap.add_argument("--model", choices=PLANS, default=MODEL, help="a packaged model: its plans (_ceiling_plans.py)")
    ap.add_argument("--pooling", default="cls", choices=["cls", "mean"], help="what every task head reads "
                    "(MiniLM's kept runs: cls; MPNet: its checkpoint's mean)")
    ap.add_argument("--budgets", help="comma-separated (default: every budget of the model's plans)")
    ap.add_argument("--only", default="", metavar="REGEX", help="only the hand-built plans whose name matches")
    ap.add_argument("--plan", action="append", default=[], metavar="NAME=PATH",
                    help="a plan file to train beside the hand-built ones (its budget's table)")
    ap.add_argument("--seeds", type=int_list, default=SEEDS, help="comma-separated, e.g. 0,1,2")
    ap.add_argument("--lrs", type=float_list, help="comma-separated learning rates for every budget (default: "
                    + "; ".join(f"{b}: {', '.join(f'{x:g}' for x in v)}" for b, v in LRS.items()).replace("%", "%%") + ")")
    ap.add_argument("--runs-dir", type=Path, help="the runs' JSONs (default: benchmarks/.cache/runs/"
                    "placement_ceiling/, from and packed into benchmarks/results/runs/placement_ceiling.tar.xz)")
    ap.add_argument("--out", type=Path, help="output prefix (default: results/placement_ceiling[_MODEL][_TASK])")
    ap.add_argument("--report-only", action="store_true", help="tables and plot from the saved runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (1: two runs side by side)")
    ap.add_argument("--curves", metavar="BUDGET@LR", help="also the held-out loss curves of short trials of "
                    "that budget's plans (seed 0), against their final accuracy, e.g. 0.1%%@2e-3")
    args = ap.parse_args(argv)
    plans = PLANS[args.model]
    budgets = [b for b in (args.budgets or ",".join(plans)).split(",") if b]
    if any(b not in plans for b in budgets):
        ap.error(f"--budgets {args.budgets}: choose from {', '.join(plans)}")
    minilm = args.model == MODEL
    out = args.out or RESULTS / "_".join(["placement_ceiling"] + ([] if minilm else [args.model])
                                         + ([] if args.task == "sst2" else [args.task]))
    extra = {name: path for name, path in (searched(args.task) if minilm else {}).items()
             if path.is_file() and name.endswith(tuple(budgets)) and re.search(args.only, name)}
    for item in args.plan:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--plan {item!r}: expected NAME=PATH to an existing plan.json")
        extra[name] = Path(path)
    runs = args.runs_dir or runs_dir("placement_ceiling")
    bench = Bench(replace(SEARCH_VS_BASELINES, model=args.model, pooling=args.pooling), [], runs, threads=args.threads)
    torch.set_num_threads(bench.threads)  # the count each run records
    table = specs(bench, args.task, extra, budgets, args.only)
    lrs = {b: args.lrs or LRS[b] for b in budgets}
    rows = collect(bench, args.task, table, args.seeds, lrs, not args.report_only)
    if not rows:
        print("no runs yet")
        return 1
    summary = summarize(rows, table)
    extra_lines = best_lr_lines(summary, rows)
    if args.curves:
        budget, _, lr = args.curves.partition("@")
        if budget not in table or not lr:
            ap.error(f"--curves {args.curves}: expected BUDGET@LR with a budget of --budgets, e.g. 0.1%@2e-3")
        curve = curves(bench, args.task, table, budget, float(lr), 0, runs / "curves" / f"{out.name}.json",
                       not args.report_only)
        extra_lines += curve_lines(curve, summary, budget, float(lr))
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(shlex.quote(a) for a in argv if a != "--report-only")  # how the runs were made
    write(summary, rows, out, args.task, command, extra_lines, model=args.model,
          head=head_params(bench.ctx(args.task).template))
    if not (args.report_only or args.runs_dir):  # the same runs pack to the same bytes
        pack("placement_ceiling")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
