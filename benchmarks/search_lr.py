"""Is the search's learning rate as good as the best rate of a grid?  For the plan the search
returns with its lr stage on (`--lr-test range`), the plan's dev score trained at the rate the
search chose against the same plan at the grid's best rate, picked on held-out train.

Protocol: glue.py's search-vs-baselines (SST-2's 8,000-row subset for 1 epoch, MRPC's whole train
for 3; batch 16, max length 128, batches grouped by length; the grid 5e-4, 1e-3, 2e-3, 5e-3), every
head reading the mean of the tokens (the search's default for the packaged MiniLM; --pooling).  Per
task and seed: one `more-search` at that seed (default settings but `--lr-test range`, at
--cost-budget); its plan trained at each grid rate on train less the held-out 20% (full-length
runs, seed 0, as the protocol selects every method's rate), the pick by held-out metric then loss;
then the plan trained on all of train at the search's rate and at the pick, at that seed, scored on
dev.  Runs are keyed by content (plan, rate, seed, settings): a plan the searches return twice
trains its grid once.  Per-run records in benchmarks/.cache/runs/search_lr/, packed into
benchmarks/results/runs/search_lr.tar.xz.  On 2 CPU cores: ~2 min per SST-2 run, ~8 min per MRPC
run (model_cost.md).

    python benchmarks/search_lr.py --tasks sst2 mrpc --seeds 0 1 2
    python benchmarks/search_lr.py --report-only     # the report from the saved runs
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
from _glue_search import content_spec, run_or_load_search  # noqa: E402
from _runs_archive import publish, runs_dir  # noqa: E402
from placement_ceiling import paired_p  # noqa: E402

STUDY = "search_lr"
GOAL = 0.3  # points: the search's rate at most this far behind the grid's best, on average


def search_folder(budget: str, cost_budget: float, seed: int) -> str:
    return f"search_lr_{budget}_x{cost_budget:g}_s{seed}"


def measure(bench: Bench, task: str, seed: int, budget: str, cost_budget: float, run_missing: bool):
    """One row: the search at ``seed``, its plan's grid pick on held-out train, both dev scores."""
    from nas import Plan

    ctx = bench.ctx(task)
    folder = search_folder(budget, cost_budget, seed)
    if not run_missing and not (ctx.runs_dir / folder / "glue_search.json").is_file():
        return None
    rec = run_or_load_search(ctx, budget, "supernet", {"seed": seed, "lr_test": "range", "cost_budget": cost_budget},
                             folder)
    plan = Plan.from_dict(rec["plan"])
    prov = plan.provenance or {}
    ev, spec = prov.get("lr_evidence") or {}, content_spec(plan)
    lr_search = float(plan.training["lr"])
    lr_grid, runs = grid_pick(bench, task, spec, run_missing)
    if lr_grid is None:
        return None
    at_search, _ = bench.run(task, "final", spec, lr_search, seed, run_missing)
    at_grid, _ = bench.run(task, "final", spec, lr_grid, seed, run_missing)
    # what the default without the lr stage (--lr-test off) writes into this plan: the finalists' rate
    lr_off = float(ev.get("finalists_lr", lr_search))
    at_off, _ = bench.run(task, "final", spec, lr_off, seed, run_missing)
    if at_search is None or at_grid is None or at_off is None:
        return None
    cost = prov.get("search_cost") or {}
    return {"task": task, "seed": seed, "budget": budget, "cost_budget": cost_budget, "plan": spec.label,
            "origin": prov.get("origin", "searched"), "params": plan.trainable_params,
            "lr_search": lr_search, "lr_rule": ev.get("rule", "(no lr stage)"),
            "confirmed": sum(t.get("verdict") == "left the start" for t in ev.get("trials", [])),
            "lr_grid": lr_grid, "holdout_at_grid": runs[("", lr_grid)]["score"], "lr_off": lr_off,
            "dev_search": 100 * at_search["score"], "dev_grid": 100 * at_grid["score"],
            "dev_off": 100 * at_off["score"],
            "search_multiple": cost.get("multiple"), "search_s": rec["search_time_s"],
            "train_s": at_grid.get("train_time_s")}


def gap_line(name: str, a: list[float], b: list[float], than: str) -> str:
    gaps = [x - y for x, y in zip(a, b)]
    sd = statistics.stdev(gaps) if len(gaps) > 1 else float("nan")
    return (f"{name}: at the search's lr {statistics.mean(a):.1f}, {than} {statistics.mean(b):.1f}; gap "
            f"{statistics.mean(gaps):+.2f} ± {sd:.2f} (n={len(gaps)}, paired p {paired_p(gaps):.2f})")


def report(rows: list[dict], command: str, proto) -> str:
    lines = [f"# The search's learning rate vs the best rate of a grid", "", f"`{command}`", "",
             f"Packaged MiniLM, protocol {proto.name} (grid {', '.join(f'{x:g}' for x in proto.lr_grid)}, picked "
             "on held-out train with full-length runs; dev score x100).  The search: default `more-search` but "
             "`--lr-test range`, one per task and seed.  Gap = dev at the search's rate − dev at the grid's pick, "
             "same plan, same seed.  Off = the same plan at the finalists' rate, what `--lr-test off` writes.", "",
             "| task | seed | plan (params, origin) | search lr (how) | grid pick | off lr | dev at search lr "
             "| dev at grid pick | dev at off lr | gap | search cost |", "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        how = r["lr_rule"].split(":")[0][:60]
        mult = f"{r['search_multiple']:.2f}x" if r["search_multiple"] else "?"
        lines.append(f"| {r['task']} | {r['seed']} | {r['plan']} ({r['params']:,}, {r['origin']}) | "
                     f"{r['lr_search']:.3g} ({how}; {r['confirmed']} confirmed) | {r['lr_grid']:g} | {r['lr_off']:g} | "
                     f"{r['dev_search']:.1f} | {r['dev_grid']:.1f} | {r['dev_off']:.1f} | "
                     f"{r['dev_search'] - r['dev_grid']:+.1f} | {mult} |")
    lines.append("")
    for name, sub in [*((t, [r for r in rows if r["task"] == t]) for t in dict.fromkeys(r["task"] for r in rows)),
                      ("all", rows)]:
        a = [r["dev_search"] for r in sub]
        lines += [f"- {gap_line(name, a, [r['dev_grid'] for r in sub], 'at the grid pick')}",
                  f"  - against the finalists' rate (`--lr-test off`): "
                  f"{gap_line(name, a, [r['dev_off'] for r in sub], 'at the off rate').split(': ', 1)[1]}"]
    if rows:
        gaps = [r["dev_search"] - r["dev_grid"] for r in rows]
        mults = [r["search_multiple"] for r in rows if r["search_multiple"]]
        ok = statistics.mean(gaps) >= -GOAL
        lines += ["", f"Mean gap over {len(gaps)} (task, seed) pairs: **{statistics.mean(gaps):+.2f}** points "
                  f"(goal: no more than {GOAL} behind: {'met' if ok else 'not met'}); search cost "
                  f"{min(mults):.2f}-{max(mults):.2f}x one training (measured, wall time)." if mults else ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(SEARCH_VS_BASELINES.tasks), choices=SEARCH_VS_BASELINES.tasks)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budget", default="0.1%")
    ap.add_argument("--cost-budget", type=float, default=0.5)
    ap.add_argument("--report-only", action="store_true", help="train nothing: report the saved runs")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_lr")
    ap.add_argument("--pooling", default="mean", choices=["cls", "mean"],
                    help="what every task head reads (the search's default, auto, reads the packaged MiniLM's mean)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (two processes on 2 cores: 1 each)")
    args = ap.parse_args(argv)
    proto = replace(SEARCH_VS_BASELINES, pooling=args.pooling)
    import torch

    torch.set_num_threads(args.threads)
    bench = Bench(proto, [], runs_dir(STUDY), threads=args.threads)
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            row = measure(bench, task, seed, args.budget, args.cost_budget, not args.report_only)
            if row is not None:
                rows.append(row)
                print(f"{task} seed {seed}: lr {row['lr_search']:.3g} -> {row['dev_search']:.1f}; grid pick "
                      f"{row['lr_grid']:g} -> {row['dev_grid']:.1f}", flush=True)
    argv_text = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    publish(STUDY, report(rows, f"python benchmarks/search_lr.py {argv_text}".strip(), proto),
            args.out.with_suffix(".md"), args.report_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
