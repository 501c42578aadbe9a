"""Can a short trial take off, and can it pick the learning rate?  The search's preferred uniform
LoRA of each cell (the settings of glue.py's search-vs-baselines protocol, packaged MiniLM) trained
cold for a few steps, a linear schedule over the trial as a finalist's, at each learning rate;
scored by held-out loss on the search's held-out rows (the first 128 of them, as the search scores;
and 400).

The finalists of a search at those sizes get 10-35 steps at the first rate of --lr-grid; this
shows whether any rate gets past the start in that many steps, and whether the order of the rates
after a short trial is the order after a full run (benchmarks/results/search_vs_baselines.csv
holds the full-length runs on the same held-out rows).

    python benchmarks/short_trial_lr.py                       # the three cells, 2 seeds
    python benchmarks/short_trial_lr.py --cells mrpc:all:0.1% --steps 20,40,80,160
    python benchmarks/short_trial_lr.py --report-only

Writes benchmarks/results/short_trial_lr.{md,json}; each cell's runs are kept in the JSON and
skipped on a rerun (--report-only rewrites the md from it).  The kept 54 runs took 13 min of
training on 2 CPU cores (5-40 s each) plus each cell's search set-up.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nas.options import float_list, int_list  # noqa: E402
from search_signal import EPOCHS, GLUE, parse_cells  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CELLS = "sst2:8000:0.1%,sst2:8000:0.02%,mrpc:all:0.1%"
HEADS = {"cls": "first token", "mean": "mean of tokens"}


def run_cell(cell, steps_grid, lrs, seeds, done: dict, data_dir: Path, save, pooling: str = "cls") -> None:
    """``pooling``: what the task head reads (nas.heads); in the runs' keys when not the first token."""
    import torch

    from nas import train as training
    from nas.baselines import baselines_at, preferred
    from nas.search.config import SearchConfig
    from nas.search.engine import Search
    from nas.search.finalists import trial_config
    from nas.search.ranking import heldout

    task, rows_n, budget = cell

    def key(seed, steps, lr):
        return f"{task}:{rows_n or 'all'}:{budget}:{seed}:{steps}:{lr:g}" + ("" if pooling == "cls" else f":{pooling}")

    todo = [(seed, steps, lr) for seed in seeds for steps in steps_grid for lr in lrs
            if key(seed, steps, lr) not in done]
    if not todo:  # a finished cell is read back, not loaded again
        return
    cfg = SearchConfig(task=task, data_dir=str(data_dir), max_train_samples=rows_n, budget=budget,
                       epochs=EPOCHS[task], output_dir="unused", progress=False, pooling=pooling)
    s = Search(cfg)
    s.prepare()
    bases = baselines_at(s.layout, s.budget)
    place = preferred(bases, s.layout)[0]
    base_plan = bases[place].plan(s.layout, **copy.deepcopy(s.plan_fields()))
    ev = s.trial_data.eval
    scored = {n: ev.select(range(min(n, len(ev)))) for n in (128, 400)}
    data = dataclasses.replace(s.trial_data, eval=ev.select(range(1)))  # scored here, not by the Trainer
    for seed, steps, lr in todo:
        plan = copy.deepcopy(base_plan)
        plan.training["lr"] = lr
        model = copy.deepcopy(s.base)
        tcfg = trial_config(cfg, plan, steps, lr, seed)  # exactly as a finalist trains
        t0 = time.perf_counter()
        training.run(training.prepare(plan, tcfg, model=model, tokenizer=s._tokenizer, data=data))
        with torch.no_grad():
            ho = {n: heldout(model, s.trial_data, r, batch_size=32) for n, r in scored.items()}
        k = key(seed, steps, lr)
        done[k] = {"task": task, "rows": rows_n or "all", "budget": budget, "placement": place, "pooling": pooling,
                   "params": base_plan.trainable_params, "seed": seed, "steps": steps, "lr": lr,
                   "loss128": ho[128].loss, "se128": ho[128].se, "loss400": ho[400].loss,
                   "accuracy400": ho[400].metrics.get("accuracy"), "seconds": time.perf_counter() - t0}
        print(f"{k} {place}: held-out loss {ho[128].loss:.4f} (128 rows), {ho[400].loss:.4f} (400)", flush=True)
        save(done)


def write_md(done: dict, path: Path) -> str:
    rows = list(done.values())
    pool = {id(r): r.get("pooling", "cls") for r in rows}  # runs before the option read the first token
    cells = sorted({(r["task"], str(r["rows"]), r["budget"], r["placement"], r["params"], pool[id(r)]) for r in rows})
    lrs = sorted({r["lr"] for r in rows})
    lines = ["# Short trials and the learning rate (`python benchmarks/short_trial_lr.py`)", "",
             "The search's preferred uniform LoRA of each cell, trained cold for N steps (linear schedule "
             "over the N steps, 6% warm-up, batch 16, grouped by length, as a finalist trial), at each "
             "learning rate. Held-out loss on the search's first 128 held-out rows, mean over seeds (each seed's "
             "value in brackets). Start (untrained): about 0.69 on SST-2, 0.66 on MRPC (the labels' prior).", "",
             "| cell | preferred baseline | head reads | steps | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---|---|---|---:|" + "---:|" * len(lrs)]
    for task, n, budget, place, params, pooling in cells:
        mine = [r for r in rows if (r["task"], str(r["rows"]), r["budget"], pool[id(r)]) == (task, n, budget, pooling)]
        for steps in sorted({r["steps"] for r in mine}):
            out = []
            for lr in lrs:
                v = [r["loss128"] for r in mine if (r["steps"], r["lr"]) == (steps, lr)]
                out.append(f"{statistics.fmean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})" if v else "-")
            lines.append(f"| {task} {n} rows {budget} | {place} r=1 ({params:,}) | {HEADS[pooling]} | {steps} | "
                         + " | ".join(out) + " |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default=CELLS, help="task:train rows (or all):budget, comma-separated")
    ap.add_argument("--steps", type=int_list, default=(20, 40, 80), help="trial lengths, e.g. 20,40,80")
    ap.add_argument("--lrs", type=float_list, default=(1e-3, 2e-3, 5e-3), help="learning rates")
    ap.add_argument("--seeds", type=int_list, default=(0, 1), help="seeds, e.g. 0,1")
    ap.add_argument("--data-dir", type=Path, default=GLUE)
    ap.add_argument("--out", type=Path, default=RESULTS / "short_trial_lr")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pooling", default="cls", help="what the task head reads, one or more: cls,mean (nas.heads)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    store = args.out.with_suffix(".json")
    done = json.loads(store.read_text()) if store.is_file() else {}
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)

        def save(d):  # after every run: an interrupted benchmark resumes
            tmp = store.with_suffix(".tmp")
            tmp.write_text(json.dumps(d, indent=1))
            tmp.replace(store)

        for pooling in args.pooling.split(","):
            for cell in parse_cells(args.cells):
                run_cell(cell, args.steps, args.lrs, args.seeds, done, args.data_dir, save, pooling)
    print(write_md(done, args.out.with_suffix(".md")))


if __name__ == "__main__":
    main()
