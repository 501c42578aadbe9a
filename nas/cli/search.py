"""more-search: find the adapter plan for a model, a task and a parameter budget."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..errors import UserError
from ..search import SearchConfig, run_search
from ..train.precision import check_precision, resolve_device
from . import quiet_libraries, run_cli
from .flags import add_flags


def parse_duration(text: str) -> float:
    """'15m', '900s', '1.5h', '900' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if not m:
        raise UserError(f"--time-budget {text!r} is not understood; write e.g. 900s, 15m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# more-search's flags, by group: SearchConfig fields (the task ones from TaskSpec)
WHAT = ["model", "pooling", "task", "budget", "space", "proxy", "allocation"]
OUTPUT = ["output_dir", "storage", "study", "resume", "heartbeat_s"]
TRIALS = ["n_trials", "trial_steps", "pruner", "sampler", "holdout", "seed"]
SEARCH = ["strategy", "cost_budget", "supernet_share", "scoring_share", "scoring_rows", "n_finalists",
          "lr_grid", "lr_test", "lr_test_range", "rungs", "eta", "noise_z", "min_progress", "supernet_lr", "normalise"]
DATA = ["data_dir", "train_file", "validation_file", "text_columns", "label_column", "task_type",
        "max_train_samples", "batch_size", "max_length", "first_trial_lr", "epochs", "device", "bf16", "fp16"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="more-search",
        description="Search per-module adapter choices (LoRA, MoRe, SURM, HeteroLoRA shortcuts) under "
                    "a trainable-parameter budget and write the best plan as JSON. With no arguments: "
                    "the packaged MiniLM on the bundled SST-2 sample.",
    )
    add_flags(p.add_argument_group("what to search for"), SearchConfig, WHAT)
    add_flags(p.add_argument_group("output and storage"), SearchConfig, OUTPUT)
    add_flags(p.add_argument_group("weight-sharing search (strategy supernet)"), SearchConfig, SEARCH)
    t = p.add_argument_group("trial budget")
    add_flags(t, SearchConfig, TRIALS)
    t.add_argument("--time-budget", help="wall-clock limit of the trial stage, e.g. 15m")
    add_flags(p.add_argument_group("data and training (as more-train)"), SearchConfig, DATA)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.output_dir)
    plan_copy = None
    if out.suffix == ".json":
        plan_copy, out = out, out.with_suffix(".search")
    if args.bf16 and args.fp16:
        raise UserError("choose one of --bf16 and --fp16")
    check_precision(resolve_device(args.device), args.bf16, args.fp16)  # before anything loads
    if args.quiet:
        quiet_libraries()
    given = {n: getattr(args, n) for n in WHAT + OUTPUT + SEARCH + TRIALS + DATA}
    cfg = SearchConfig(
        **{**given, "output_dir": str(out)},
        timeout_s=parse_duration(args.time_budget) if args.time_budget else None, progress=not args.quiet,
    )
    try:
        res = run_search(cfg)
    except KeyboardInterrupt:  # the running trial is queued again (nas.search.workers)
        print("interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130
    if plan_copy is not None:
        res.plan.save(plan_copy)
    plan_path = plan_copy or res.plan_path
    print(f"plan: {plan_path} ({res.plan.trainable_params:,} trainable parameters, "
          f"{res.plan.provenance.get('objective', 'held-out score')} {res.best_value:.4f})")
    print(f"report: {out / 'report.md'}  plots: {out / 'pareto.png'}, {out / 'allocation.png'}")
    print(f"next: more-train --plan {plan_path}")
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
