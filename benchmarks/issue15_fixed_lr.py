"""Issue #15's methods trained at one fixed learning rate: a check of the protocol's lr selection.

On MRPC every 150-step selection run of the CPU protocol's first versions sat at the majority
class, so the picked lr carried no information (the protocol now selects with runs as long as a
final); this trains the named methods' final runs (the protocol's training rows and epochs;
--full: all of SST-2's) at one lr for all, in the same runs folder as benchmarks/glue.py (a run
that exists there at that lr is reused), plus any plan files given with --plan.  Several
processes may share a runs folder, each with its own --plan / --seeds share.

    python benchmarks/issue15_fixed_lr.py --task mrpc --lr 2e-3 --runs-dir RUNS \\
        --methods new-search@0.1% peft-qv@0.1% old-search@0.1% --plan NAME=plan.json

Prints the table and writes benchmarks/results/issue15_cpu_fixed_lr_<task>[_all].md.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from glue import ISSUE15, ISSUE15_BUDGETS, RESULTS  # noqa: E402
from _glue_bench import Bench  # noqa: E402
from _glue_methods import spec_from_plan  # noqa: E402
from _glue_report import _ms  # noqa: E402
from _glue_search import issue15_methods  # noqa: E402


def main(argv=None) -> int:
    from nas import Plan

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=ISSUE15.tasks, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--runs-dir", type=Path, required=True, help="benchmarks/glue.py's --runs-dir")
    ap.add_argument("--methods", nargs="+", default=[], help="issue #15 method names")
    ap.add_argument("--plan", action="append", default=[], metavar="LABEL=PATH",
                    help="a plan file, trained as the spec LABEL (a glue.py run label reuses its runs)")
    ap.add_argument("--full", action="store_true", help="the full SST-2 training set (as glue.py --full)")
    ap.add_argument("--seeds", type=int, nargs="+", help=f"default {' '.join(map(str, ISSUE15.seeds))}")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    proto = replace(ISSUE15, seeds=tuple(args.seeds or ISSUE15.seeds))
    if args.full:
        proto = replace(proto, name=f"{proto.name}-sst2all", train_rows={})
    bench = Bench(proto, issue15_methods(ISSUE15_BUDGETS), args.runs_dir, threads=1)
    torch.set_num_threads(bench.threads)  # the count each run records
    names = {m.name for m in bench.methods}
    if bad := [n for n in args.methods if n not in names]:
        ap.error(f"unknown method(s) {bad}; choose from {sorted(names)}")
    specs = [(n, bench.spec(args.task, bench.method(n))) for n in args.methods]
    for item in args.plan:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--plan {item!r}: expected LABEL=PATH to an existing plan.json")
        specs.append((f"plan file `{path}`", spec_from_plan(label, Plan.load(path))))
    lines = [f"# Issue #15's methods at one lr ({args.lr:g}) on {args.task}", "",
             f"`python benchmarks/issue15_fixed_lr.py --task {args.task} --lr {args.lr:g} ...`: the protocol's "
             f"final runs ({proto.train_rows.get(args.task, 'all')} training rows, {proto.epochs_for(args.task):g} "
             f"epochs, batch {proto.batch_size}, max length {proto.max_length}), seeds "
             f"{', '.join(map(str, proto.seeds))}, every method at "
             f"lr {args.lr:g} instead of its selected one; dev scores x100, mean ± std.", "",
             "| method | trained | params | dev accuracy | dev F1 | per seed |", "|---|---|---:|---|---|---|"]
    for name, spec in specs:
        recs = []
        for seed in proto.seeds:
            rec, cached = bench.run(args.task, "final", spec, args.lr, seed)
            recs.append(rec)
            print(f"{name:28s} seed {seed} accuracy {rec['score']:.4f}{' (cached)' if cached else ''}", flush=True)
        acc = [r["score"] for r in recs]
        f1 = [r["metrics"].get("f1") for r in recs]
        lines.append(f"| {name} | {spec.label} | {recs[0]['trainable_params']:,} | {_ms(acc)} | {_ms(f1)} | "
                     f"{', '.join(f'{100 * a:.1f}' for a in acc)} |")
    out = args.out or RESULTS / f"issue15_cpu_fixed_lr_{args.task}{'_all' if args.full else ''}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
