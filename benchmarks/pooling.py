"""Does the head the checkpoint was trained for change the comparison?  The packaged MiniLM is a
sentence-transformers checkpoint trained to be read as the mean of its token states; the head
transformers builds reads the first token.  The same methods, trained in full with each head.

Protocol: glue.py's search-vs-baselines (SST-2's 8,000-row subset for 1 epoch, MRPC's whole train
for 3; batch 16, max length 128, grouped by length), every method at lr 2e-3 (the rate the
protocol's held-out selection picked for both methods on both tasks, with the first-token head),
seeds 5-7 (the first-token runs of the seeds study, benchmarks/search_vs_baselines_fixed_lr.py, are
reused: copied when their run key matches).  Methods: the search's plan of the comparison (its
no-signal rule: LoRA r1 on the MLP of layers 1-5, 19.2k parameters) and PEFT LoRA r2 on
query,value (18.4k), each with the head reading the first token and the mean of the tokens.  Runs
in benchmarks/.cache/runs/pooling/, packed into benchmarks/results/runs/pooling.tar.xz.
On 2 CPU cores: ~2 min per SST-2 run, ~8 min per MRPC run (model_cost.md).

    python benchmarks/pooling.py --tasks sst2 mrpc
    python benchmarks/pooling.py --report-only
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from glue import RESULTS, SEARCH_VS_BASELINES  # noqa: E402
from _glue_bench import Bench  # noqa: E402
from _glue_methods import peft_spec, spec_from_plan  # noqa: E402
from _runs_archive import publish, runs_dir  # noqa: E402
from placement_ceiling import paired_p  # noqa: E402

STUDY, SEEDS_STUDY = "pooling", "search_vs_baselines_seeds"
LR, SEEDS, HEADS = 2e-3, (5, 6, 7), ("cls", "mean")
LABEL = {"cls": "first token", "mean": "mean of tokens"}


def specs(bench: Bench, task: str) -> dict:
    """The methods as the seeds study trained them (same labels and payloads: same run keys)."""
    from nas import Plan

    ctx = bench.ctx(task)
    plan = Plan.load(runs_dir(SEEDS_STUDY) / task / "search_supernet_0.1%" / "plan.json")
    return {"search's plan (MLP r1, layers 1-5)": spec_from_plan("search-supernet-0.1pct", plan),
            "PEFT LoRA r2 on query,value": peft_spec(ctx, 2, "qv")}


def score(bench: Bench, task: str, spec, seed: int, run_missing: bool) -> float | None:
    path = bench.run_path(task, "final", spec, LR, seed)
    old = runs_dir(SEEDS_STUDY) / path.relative_to(bench.runs_dir)
    if not path.is_file() and old.is_file():  # the seeds study's run: same key, same training
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(old, path)
    rec, _ = bench.run(task, "final", spec, LR, seed, run_missing)
    return None if rec is None else 100 * rec["score"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"], choices=SEARCH_VS_BASELINES.tasks)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    folder = runs_dir(STUDY)
    benches = {h: Bench(replace(SEARCH_VS_BASELINES, pooling=h), [], folder, threads=2) for h in HEADS}
    lines = ["# The task head: the first token or the checkpoint's own mean pooling", "",
             f"`python benchmarks/pooling.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(
                 " --report-only", ""), "",
             "Packaged MiniLM (a sentence-transformers checkpoint: mean pooling), protocol search-vs-baselines, "
             f"lr {LR:g} for all, seeds {', '.join(map(str, SEEDS))}; dev score x100 (accuracy; MRPC: accuracy as the "
             "protocol's main metric). Gap = mean head − first-token head, paired by seed.", "",
             "| task | method | first token | mean of tokens | gap (paired p) |", "|---|---|---|---|---|"]
    for task in args.tasks:
        for name, spec in specs(benches["cls"], task).items():
            got = {h: [score(benches[h], task, spec, s, not args.report_only) for s in SEEDS] for h in HEADS}
            if any(v is None for vs in got.values() for v in vs):
                continue
            gaps = [m - c for c, m in zip(got["cls"], got["mean"])]
            cell = {h: f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f} ({', '.join(f'{x:.1f}' for x in v)})"
                    for h, v in got.items()}
            lines.append(f"| {task} | {name} | {cell['cls']} | {cell['mean']} | "
                         f"{statistics.mean(gaps):+.1f} ± {statistics.stdev(gaps):.1f} ({paired_p(gaps):.2f}) |")
            print(lines[-1], flush=True)
    publish(STUDY, "\n".join(lines) + "\n", RESULTS / "pooling.md", args.report_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
