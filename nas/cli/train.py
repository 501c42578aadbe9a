"""more-train: train a plan (static or dynamic allocation) and save adapters, metrics, exports.

Defaults come from the plan's ``training`` hints and ``task`` options; flags override them.
On success the last line on stdout is a JSON summary of the run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..plan import Plan
from ..train import TrainConfig, train
from . import run_cli
from .flags import add_flags


# more-train's flags, by group: TrainConfig fields (the task ones from TaskSpec); a flag not given
# leaves the plan's value (then the TrainConfig default) in place.
TRAINING = ["allocation", "epochs", "lr", "batch_size", "seed", "max_length", "max_steps", "eval_every",
            "scheduler", "warmup_ratio", "weight_decay", "dynamic_every", "dynamic_proxy",
            "group_by_length", "device"]
OUTPUT = ["output_dir", "resume", "merge"]
TASK = ["task", "data_dir", "train_file", "validation_file", "text_columns", "label_column", "task_type",
        "max_train_samples"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="more-train",
        description="Train an adapter plan (from more-search) on a task and save the result.",
        epilog="Tasks: GLUE by name (cola sst2 mrpc qqp stsb mnli qnli rte wnli; from --data-dir in "
               "the original GLUE layout, or the Hub/cache), sst2-sample (bundled, the default), or "
               "your own --train-file/--validation-file (CSV, TSV, JSON Lines).",
    )
    p.add_argument("--plan", required=True, help="plan JSON written by more-search")
    add_flags(p.add_argument_group("training (default: the plan's training hints)"), TrainConfig, TRAINING,
              use_defaults=False)
    o = p.add_argument_group("output")
    add_flags(o, TrainConfig, OUTPUT, use_defaults=False)
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_flags(p.add_argument_group("task (default: the plan's task)"), TrainConfig, TASK, use_defaults=False)
    return p


def _main(argv=None):
    args = build_parser().parse_args(argv)
    plan = Plan.load(args.plan)
    given = {n: getattr(args, n) for n in TRAINING + OUTPUT + TASK}
    given["output_dir"] = args.output_dir or str(Path("runs") / Path(args.plan).stem)
    cfg = TrainConfig.from_plan(plan, **given, progress=False if args.no_progress else None)
    result = train(plan, cfg)
    print(f"{result.main_metric} = {result.score:.4f} after {result.steps} steps; "
          f"outputs in {result.output_dir}", file=sys.stderr)
    if result.merge_report is not None:
        rep = result.merge_report
        print(f"merged model: {len(rep['merged'])} adapter(s) folded"
              + (f"; not foldable (saved beside it as residual_plan.json): {', '.join(rep['not_foldable'])}"
                 if rep["not_foldable"] else ""), file=sys.stderr)
    summary = {k: getattr(result, k) for k in ("main_metric", "score", "metrics", "steps", "train_time_s",
                                                "step_time_s", "peak_memory_bytes", "trainable_params",
                                                "output_dir", "peft_dir", "merge_report")}
    print(json.dumps(summary))
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
