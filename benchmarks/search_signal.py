"""When does the search see anything? `more-search` (the default weight-sharing search, default
settings) on real GLUE data at several training-set sizes: whether the finalists' training took
off (held-out loss at least --min-progress below the start; else the search returns the
preferred uniform LoRA, "No signal"), which plan it returned, and what it cost as a multiple of
one full training run of that plan.  The search's budget is a share of one full run, so a
larger training set gives every stage proportionally more steps, while the steps a small
adapter needs to get past the start stay about the same.

Each cell runs the CLI exactly as a user would, one process per cell (--procs at a time, each
with --threads threads); a cell whose plan.json exists is read back (--fresh runs it again).
With --train, each cell then trains its returned plan once with `more-train` (seed 0, the plan's
own settings, the same training rows), so the cost is also measured in the user's unit: the
search command's wall time over the training command's, both end to end.  Run it with --procs 1
for that ratio: two processes sharing the cores slow each other unevenly.
Prints a table and writes benchmarks/results/search_signal.{md,csv}; the md names the command, and
the same command with --report-only rewrites it from the CSV.  The cells' folders (searches, their
trainings) stay in benchmarks/.cache/runs/search_signal/ (not kept).  On 2 CPU cores, one cell at a
time with --train (the kept report): ~1.5 min per 8,000-row SST-2 cell, ~7 min for MRPC, 11-13 min
per full SST-2 cell: ~34 min for the five.

Usage:  python benchmarks/search_signal.py [--cells sst2:8000:0.1%,sst2:all:0.1%,...]
            [--runs-dir DIR] [--procs 2] [--threads 1] [--fresh] [--train] [--report-only]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GLUE = ROOT.parent / "shared" / "data" / "glue"
EPOCHS = {"sst2": 1, "mrpc": 3}  # the GLUE protocol's: SST-2 1 epoch, MRPC 3
CELLS = "sst2:8000:0.1%,sst2:8000:0.02%,mrpc:all:0.1%,sst2:all:0.1%,sst2:all:0.02%"


def parse_cells(text: str) -> list[tuple[str, int | None, str]]:
    cells = []
    for part in filter(None, text.split(",")):
        try:
            task, rows, budget = part.split(":")
            cells.append((task, None if rows == "all" else int(rows), budget))
        except ValueError:
            sys.exit(f"error: cell {part!r} is not task:rows:budget (rows a number or 'all'), e.g. sst2:8000:0.1%")
        if task not in EPOCHS:
            sys.exit(f"error: task {task!r} has no protocol here; choose {', '.join(EPOCHS)}")
    return cells


def cell_dir(runs: Path, task: str, rows: int | None, budget: str) -> Path:
    return runs / f"{task}_{rows or 'all'}_{budget.rstrip('%')}pct"


def _timed(cmd: list[str], threads: int, label: str) -> tuple[float, str]:
    """(wall seconds, stdout) of one CLI run at ``threads`` threads; exits with its stderr on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(f"[{label}] started", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    print(f"[{label}] done in {wall:.0f} s", flush=True)
    return wall, done.stdout


def run_cell(cell, runs: Path, data_dir: Path, threads: int, fresh: bool, train: bool = False) -> Path:
    task, rows, budget = cell
    out, label = cell_dir(runs, task, rows, budget), f"{task} {rows or 'all'} rows {budget}"
    subset = lambda flag: [flag, str(rows)] if rows else []  # noqa: E731 (the two CLIs spell it differently)
    if fresh or not (out / "plan.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        wall, _ = _timed([sys.executable, "-m", "nas.cli.search", "-q", "--task", task, "--data-dir", str(data_dir),
                          "--epochs", str(EPOCHS[task]), "--budget", budget, "-o", str(out), *subset("--max-train-samples")],
                         threads, f"{label}: search")
        (out / "search_wall.json").write_text(json.dumps({"wall_s": wall, "threads": threads}))
    if train and (fresh or not (out / "train.json").is_file()):
        # the plan carries the task and its settings; only the subset of train is the benchmark's
        wall, stdout = _timed([sys.executable, "-m", "nas.cli.train", "--plan", str(out / "plan.json"),
                               "--data_dir", str(data_dir), "--output_dir", str(out / "train"),
                               "--overwrite_output_dir", "--no-progress", *subset("--max_train_samples")],
                              threads, f"{label}: train")
        (out / "train.json").write_text(json.dumps({"wall_s": wall, "threads": threads,
                                                    **json.loads(stdout.strip().splitlines()[-1])}))
    return out


def finalists_by_rung(out: Path) -> dict:
    """The last rung's best searched plan and best uniform-LoRA baseline (held-out loss)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.journal")))
    trials = [t for t in optuna.load_study(study_name="more-search", storage=storage).trials
              if t.value is not None and "rung" in t.user_attrs]
    if not trials:
        return {}
    last = max(t.user_attrs["rung"] for t in trials)
    top = [t for t in trials if t.user_attrs["rung"] == last]
    best = lambda baseline: min((t for t in top if t.user_attrs["origin"].startswith("baseline") == baseline),  # noqa: E731
                                key=lambda t: t.value, default=None)
    plan, base = best(False), best(True)
    return {"rung": last, "steps": top[0].user_attrs["steps"],
            "best_plan": plan.user_attrs["origin"] if plan else "", "best_plan_loss": plan.value if plan else None,
            "best_baseline": base.user_attrs["origin"] if base else "",
            "best_baseline_loss": base.value if base else None}


def row_of(cell, out: Path) -> dict:
    task, rows, budget = cell
    plan = json.loads((out / "plan.json").read_text())
    prov, meta = plan["provenance"], json.loads((out / "supernet.json").read_text())
    cost, signal = prov["search_cost"], prov.get("signal") or {}
    sizes = cost.get("stage_sizes", {})
    read = lambda name: json.loads((out / name).read_text()) if (out / name).is_file() else {}  # noqa: E731
    search_wall, trained = read("search_wall.json").get("wall_s"), read("train.json")
    measured = {"search_wall_s": search_wall, "train_wall_s": trained.get("wall_s"),
                "measured_multiple": search_wall / trained["wall_s"] if search_wall and trained else None,
                "train_lr": plan["training"]["lr"], "train_score": trained.get("score")}
    return {"task": task, "train_rows": rows or "all", "budget": budget, "full_run_steps": cost["full_run_steps"],
            "supernet_steps": meta["steps"], "supernet_loss_first": meta["loss_first"],
            "supernet_loss_last": meta["loss_last"], "finalist_step_budget": sizes.get("finalist_step_budget"),
            "start_loss": signal.get("start_loss"), "loss": signal.get("loss"), "progress": signal.get("progress"),
            "signal": not signal.get("fallback"), "origin": prov["origin"], "params": plan["trainable_params"],
            **finalists_by_rung(out), "cost_cpu": cost["multiple_cpu"], "cost_wall": cost["multiple"],
            "planned": cost.get("planned_multiple"), "search_s": cost["search_seconds"], **measured}


def fmt(v, spec=".3f"):
    return "" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def measured_cell(r: dict) -> str:
    """The measured columns: search s / training s = multiple, and the training's dev score (lr)."""
    if r["measured_multiple"] is None:
        return "(--train) | "
    return (f"{r['search_wall_s']:.0f} / {r['train_wall_s']:.0f} = **{r['measured_multiple']:.2f}x** | "
            f"{100 * r['train_score']:.1f} ({r['train_lr']:g})")


def write(rows: list[dict], args, command: str, rewrite: bool = False) -> str:
    """search_signal.md (and .csv, unless ``rewrite``: from the CSV, keeping the md's date line)."""
    from _glue_report import kept_line

    head = ["| task | train rows | budget | full-run steps | super-network steps (train loss) | "
            "finalists' steps, last rung | held-out loss: start -> returned (progress) | took off | "
            "returned plan | best searched / best baseline, last rung | cost CPU (wall), estimated | search s | "
            "measured: search s / training s | dev score, one training (lr) |",
            "|---|---:|---|---:|---|---:|---|---|---|---|---|---:|---|---|"]
    lines = [f"| {r['task']} | {r['train_rows']} | {r['budget']} | {r['full_run_steps']:,} | {r['supernet_steps']} "
             f"({r['supernet_loss_first']:.3f} -> {r['supernet_loss_last']:.3f}) | {fmt(r.get('steps'))} | "
             f"{fmt(r['start_loss'])} -> {fmt(r['loss'])} ({r['progress']:.0%}) | {'yes' if r['signal'] else '**no**'} | "
             f"{r['origin']} ({r['params']:,}) | {r.get('best_plan', '')} {fmt(r.get('best_plan_loss'))} / "
             f"{r.get('best_baseline', '')} {fmt(r.get('best_baseline_loss'))} | "
             f"{r['cost_cpu']:.2f}x ({r['cost_wall']:.2f}x) | {r['search_s']:.0f} | {measured_cell(r)} |"
             for r in rows]
    import torch
    import transformers

    made = (f"- date: {time.strftime('%Y-%m-%d')}; machine: {platform.machine()}, {os.cpu_count()} CPU cores; "
            f"Python {platform.python_version()}; torch {torch.__version__}, transformers {transformers.__version__}; "
            f"{args.procs} search(es) at a time, {args.threads} thread(s) each")
    md = "\n".join([
        "# When the search sees a signal: `more-search` at several training-set sizes",
        "",
        f"Made by `{command}`; add `--report-only` to rewrite this report from search_signal.csv.",
        "",
        kept_line(RESULTS / "search_signal.md", "- date: ", made) if rewrite else made,
        "- model: the packaged MiniLM; data: GLUE train (the first --max-train-samples rows drawn with seed 0, "
        "or all); epochs: SST-2 1, MRPC 3; batch 16; every other setting is more-search's default "
        "(--cost-budget 0.5, --min-progress 0.05, 20% of train held out, 128 held-out rows score the plans)",
        "- took off: the best baseline of the finalists' last rung lowered the held-out loss at least 5% below "
        "the start (the untrained model's, or the labels' prior's if lower); otherwise the search returns the "
        "preferred uniform LoRA (No signal) and the order of its finalists is noise",
        "- cost, estimated: the search's stages over one full training run of the returned plan, by its own "
        "estimate (the plan's step time in its short trial x the full run's steps), in CPU time and in wall time",
        "- cost, measured (--train): the wall time of the `more-search` command over that of `more-train --plan` "
        "on its plan (seed 0, the plan's own settings and lr, the same training rows, dev evaluated each epoch), "
        "both end to end with model loading, one command at a time; the dev score is that one run's (one seed: "
        "not a comparison of methods)",
        "",
        *head, *lines, ""])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_signal.md").write_text(md)
    if rewrite:
        return md
    with open(RESULTS / "search_signal.csv", "w", newline="") as f:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return md


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default=CELLS, help="task:train rows (or all):budget, comma-separated")
    ap.add_argument("--data-dir", type=Path, default=GLUE)
    ap.add_argument("--runs-dir", type=Path, help="the cells' folders (default benchmarks/.cache/runs/search_signal/)")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fresh", action="store_true", help="run every cell again")
    ap.add_argument("--train", action="store_true",
                    help="also train each returned plan once and measure the search's cost against it")
    ap.add_argument("--report-only", action="store_true", help="rewrite the md from search_signal.csv (runs nothing)")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/search_signal.py", *map(shlex.quote, [a for a in argv if a != "--report-only"])])
    if args.report_only:
        from _glue_bench import csv_rows

        print(write(csv_rows(RESULTS / "search_signal.csv"), args, command, rewrite=True))
        return
    cells = parse_cells(args.cells)
    if not args.data_dir.is_dir():
        sys.exit(f"error: no GLUE folder at {args.data_dir}; pass --data-dir")
    from _runs_archive import CACHE

    runs = args.runs_dir or CACHE / "runs" / "search_signal"
    with ThreadPoolExecutor(max(1, args.procs)) as pool:
        outs = list(pool.map(lambda c: run_cell(c, runs, args.data_dir, args.threads, args.fresh, args.train), cells))
    print(write([row_of(c, o) for c, o in zip(cells, outs)], args, command))


if __name__ == "__main__":
    main()
