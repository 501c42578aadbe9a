"""The search vs uniform LoRA baselines' methods trained at one fixed learning rate: a check of the
protocol's lr selection, and the way to give its table more seeds.

On MRPC every 150-step selection run of the CPU protocol's first versions sat at the majority
class, so the picked lr carried no information (the protocol now selects with runs as long as a
final); this trains the named methods' final runs (the protocol's training rows and epochs;
--full: all of SST-2's) at one lr for all, plus any plan files given with --plan.  A run that
exists in the runs folder at that lr is reused; several processes may share the folder, each with
its own --plan / --seeds share.  The default folder, benchmarks/.cache/runs/search_vs_baselines_seeds/,
is extracted from and packed into benchmarks/results/runs/search_vs_baselines_seeds.tar.xz (the
extra seeds search_vs_baselines_seeds.py joins to the table); --runs-dir is used as it is.
Time on 2 CPU cores (1 thread, the kept runs): ~1-2 min per SST-2 run (8,000 rows), ~5-6 min per MRPC run.

    python benchmarks/search_vs_baselines_fixed_lr.py --task mrpc --lr 2e-3 \\
        --methods new-search@0.1% peft-qv@0.1% old-search@0.1% --plan NAME=plan.json
    python benchmarks/search_vs_baselines_fixed_lr.py ... --report-only   # the table from the saved runs

Prints the table and writes benchmarks/results/search_vs_baselines_fixed_lr_<task>[_full].md, whose
first line is the command.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from glue import RESULTS, SEARCH_VS_BASELINES, SEARCH_VS_BASELINES_BUDGETS  # noqa: E402
from _glue_bench import Bench  # noqa: E402
from _glue_methods import spec_from_plan  # noqa: E402
from _glue_report import _ms  # noqa: E402
from _glue_search import comparison_methods  # noqa: E402
from _runs_archive import pack, runs_dir  # noqa: E402

STUDY = "search_vs_baselines_seeds"


def main(argv=None) -> int:
    from nas import Plan

    proto = SEARCH_VS_BASELINES
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=proto.tasks, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--runs-dir", type=Path, help=f"benchmarks/glue.py's --runs-dir (default: benchmarks/.cache/"
                    f"runs/{STUDY}/, from and packed into benchmarks/results/runs/{STUDY}.tar.xz)")
    ap.add_argument("--methods", nargs="+", default=[], help="method names of glue.py --protocol search-vs-baselines")
    ap.add_argument("--plan", action="append", default=[], metavar="LABEL=PATH",
                    help="a plan file, trained as the spec LABEL (a glue.py run label reuses its runs)")
    ap.add_argument("--full", action="store_true", help="the full SST-2 training set (as glue.py --full)")
    ap.add_argument("--seeds", type=int, nargs="+", help=f"default {' '.join(map(str, proto.seeds))}")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--report-only", action="store_true", help="the table from the saved runs (trains nothing)")
    args = ap.parse_args(argv)
    proto = replace(proto, seeds=tuple(args.seeds or proto.seeds))
    if args.full:
        proto = replace(proto, name=f"{proto.name}-sst2all", train_rows={})
    bench = Bench(proto, comparison_methods(SEARCH_VS_BASELINES_BUDGETS), args.runs_dir or runs_dir(STUDY), threads=1)
    torch.set_num_threads(bench.threads)  # the count each run records
    names = {m.name for m in bench.methods}
    if bad := [n for n in args.methods if n not in names]:
        ap.error(f"unknown method(s) {bad}; choose from {sorted(names)}")
    specs = [(n, bench.spec(args.task, bench.method(n), build=not args.report_only)) for n in args.methods]
    for item in args.plan:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--plan {item!r}: expected LABEL=PATH to an existing plan.json")
        specs.append((f"plan file `{path}`", spec_from_plan(label, Plan.load(path))))
    command = " ".join(["python benchmarks/search_vs_baselines_fixed_lr.py",
                        *map(shlex.quote, [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"])])
    lines = [f"# The search vs uniform LoRA baselines' methods at one lr ({args.lr:g}) on {args.task}", "",
             f"`{command}`: the protocol's final runs ({proto.train_rows.get(args.task, 'all')} training rows, "
             f"{proto.epochs_for(args.task):g} epochs, batch {proto.batch_size}, max length {proto.max_length}), "
             f"seeds {', '.join(map(str, proto.seeds))}, every method at lr {args.lr:g} instead of its selected "
             "one; dev scores x100, mean ± std.", "",
             "| method | trained | params | dev accuracy | dev F1 | per seed |", "|---|---|---:|---|---|---|"]
    try:
        for name, spec in specs:
            recs = []
            for seed in proto.seeds if spec is not None else ():  # None: a search not run (--report-only)
                rec, cached = bench.run(args.task, "final", spec, args.lr, seed, not args.report_only)
                if rec is not None:
                    recs.append(rec)
                    print(f"{name:28s} seed {seed} accuracy {rec['score']:.4f}{' (cached)' if cached else ''}", flush=True)
            if not recs:
                continue
            acc = [r["score"] for r in recs]
            f1 = [r["metrics"].get("f1") for r in recs]
            lines.append(f"| {name} | {spec.label} | {recs[0]['trainable_params']:,} | {_ms(acc)} | {_ms(f1)} | "
                         f"{', '.join(f'{100 * a:.1f}' for a in acc)} |")
    finally:
        if bench.ran and not args.runs_dir:  # the same runs pack to the same bytes
            pack(STUDY)
    out = args.out or RESULTS / f"search_vs_baselines_fixed_lr_{args.task}{'_full' if args.full else ''}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
