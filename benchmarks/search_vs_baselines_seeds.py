"""The search vs uniform LoRA baselines table on more seeds: the saved final runs of
benchmarks/glue.py --protocol search-vs-baselines (its CSV, benchmarks/results/search_vs_baselines.csv)
joined with extra seeds trained by benchmarks/search_vs_baselines_fixed_lr.py at each method's
selected lr.

A method's extra runs are the run JSONs under --runs-dir with the same task, trained spec and lr
as its final runs in the CSV, so every seed of a method trains the same thing the same way.  The
default --runs-dir is the fixed-lr script's: benchmarks/.cache/runs/search_vs_baselines_seeds/,
extracted from benchmarks/results/runs/search_vs_baselines_seeds.tar.xz.  This script trains
nothing (seconds); the kept extra seeds (35 SST-2 runs, 12 MRPC runs, 1.8 h in all) took ~1 min
per SST-2 run and ~5.5 min per MRPC run on 2 CPU cores.

    python benchmarks/search_vs_baselines_fixed_lr.py --task mrpc --lr 2e-3 --seeds 5 6 7 \\
        --methods peft-qv@0.1% widest-lora@0.1% --plan search-supernet-0.1pct=PLAN.json
    python benchmarks/search_vs_baselines_seeds.py    # -> benchmarks/results/search_vs_baselines_seeds.md
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _glue_report import _ms  # noqa: E402
from _runs_archive import runs_dir  # noqa: E402
from placement_ceiling import paired_p  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ROLES = {"new": "new-search@{b}", "(a)": "peft-qv@{b}", "(b)": "widest-lora@{b}", "r8": "peft-lora-r8"}


def scores(csv_rows: list[dict], runs: list[dict]) -> dict[tuple[str, str], dict[int, float]]:
    """(task, method) -> {seed: dev score x100}: the CSV's final runs, plus every run JSON with the
    same task, spec and lr as that method's final runs (a seed the CSV has is kept from the CSV)."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    how: dict[tuple[str, str], set] = {}
    for r in csv_rows:
        if r["phase"] == "final" and r.get("score") not in ("", None):
            out.setdefault((r["task"], r["method"]), {})[int(r["seed"])] = 100 * float(r["score"])
            how.setdefault((r["task"], r["method"]), set()).add((r["spec"], float(r["lr"])))
    for rec in runs:
        for key, specs in how.items():
            if rec["task"] == key[0] and (rec["spec"], float(rec["lr"])) in specs and rec.get("status", "ok") == "ok":
                out[key].setdefault(int(rec["seed"]), 100 * float(rec["score"]))
    return out


def cells(table: dict, budgets: dict[str, tuple[str, ...]]) -> list[dict]:
    """Per task and budget: each role's seeds, the new plan's gap to the better (by mean) of (a)
    and (b), paired by seed over the seeds all of them have, and its gap to PEFT r8."""
    out = []
    for task, bs in budgets.items():
        for b in bs:
            got = {role: table.get((task, name.format(b=b)), {}) for role, name in ROLES.items()}
            if not (got["new"] and got["(a)"] and got["(b)"]):
                continue
            better = max(("(a)", "(b)"), key=lambda k: statistics.fmean(got[k].values()))
            row = {"task": task, "budget": b, "better": better, **got}
            for ref, key in ((better, "gap"), ("r8", "vs_r8")):
                seeds = sorted(set(got["new"]) & set(got[ref]))
                d = [got["new"][s] - got[ref][s] for s in seeds]
                row[key] = d
            out.append(row)
    return out


def ms(v) -> str:
    v = list(v)
    return f"{_ms(v, scale=1.0)} (n={len(v)})" if len(v) > 1 else "-"


def lines(rows: list[dict], command: str) -> list[str]:
    out = ["# The search vs uniform LoRA baselines on more seeds", "", f"`{command}`: the CSV's final runs "
           "plus the runs under --runs-dir that train the same spec at the same (held-out-selected) lr, i.e. "
           "benchmarks/search_vs_baselines_fixed_lr.py's extra seeds. Dev score x100, mean ± std over seeds; gap = new − "
           "the better of (a), (b) by mean, paired by seed (mean ± std of the per-seed differences, "
           "two-sided paired p).", "",
           "| task | budget | new plan | (a) PEFT q,v | (b) widest LoRA | gap vs max(a,b) (p) | PEFT r8 | new − r8 (p) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def gap(d):
            return (f"{statistics.fmean(d):+.2f} ± {statistics.stdev(d):.2f} (p = {paired_p(d):.2f})"
                    if len(d) > 2 else "-")
        out.append(f"| {r['task']} | {r['budget']} | {ms(r['new'].values())} | {ms(r['(a)'].values())} | "
                   f"{ms(r['(b)'].values())} | {gap(r['gap'])} | {ms(r['r8'].values())} | {gap(r['vs_r8'])} |")
    gaps = [r["gap"] for r in rows if len(r["gap"]) > 1]
    if gaps:
        mean = statistics.fmean(statistics.fmean(d) for d in gaps)
        se = math.sqrt(sum(statistics.variance(d) / len(d) for d in gaps)) / len(gaps)
        out += ["", f"Mean gap over {len(gaps)} cell(s): **{mean:+.2f}** points (standard error {se:.2f}; "
                "the search's goal: >= +1.0)."]
    return out + [""]


def main(argv=None) -> int:
    from glue import SEARCH_VS_BASELINES_BUDGETS

    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--csv", type=Path, default=RESULTS / "search_vs_baselines.csv",
                    help="benchmarks/glue.py's runs CSV")
    ap.add_argument("--runs-dir", type=Path, action="append",
                    help="search_vs_baselines_fixed_lr.py's --runs-dir (default: its default)")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_vs_baselines_seeds", help="write PREFIX.md")
    args = ap.parse_args(argv)
    if not args.csv.is_file():
        ap.error(f"--csv {args.csv}: no such file; give benchmarks/glue.py's runs CSV")
    dirs = args.runs_dir or [runs_dir("search_vs_baselines_seeds")]
    if missing := [str(d) for d in dirs if not d.is_dir()]:
        ap.error(f"--runs-dir {', '.join(missing)}: no such folder; give search_vs_baselines_fixed_lr.py's --runs-dir")
    runs = [json.loads(p.read_text()) for d in dirs for p in sorted(d.glob("*/final/*.json"))]
    with open(args.csv, newline="") as f:
        rows = cells(scores(list(csv.DictReader(f)), runs), SEARCH_VS_BASELINES_BUDGETS)
    command = " ".join(["python benchmarks/search_vs_baselines_seeds.py",
                        *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    text = "\n".join(lines(rows, command))
    Path(f"{args.out}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
