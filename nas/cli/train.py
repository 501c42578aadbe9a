"""more-train: train a plan (static or dynamic allocation) and save adapters, metrics, exports.

Defaults come from the plan's ``training`` hints and ``task`` options; flags override them.
On success the last line on stdout is a JSON summary of the run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="more-train",
        description="Train an adapter plan (from more-search) on a task and save the result.",
        epilog="Tasks: GLUE by name (cola sst2 mrpc qqp stsb mnli qnli rte wnli; from --data-dir in "
               "the original GLUE layout, or the Hub/cache), sst2-sample (bundled, the default), or "
               "your own --train-file/--validation-file (CSV, TSV, JSON Lines).",
    )
    p.add_argument("--plan", required=True, help="plan JSON written by more-search")
    g = p.add_argument_group("training (default: the plan's training hints)")
    g.add_argument("--allocation", choices=["static", "dynamic"])
    g.add_argument("--epochs", type=float)
    g.add_argument("--lr", type=float, help="learning rate")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--max-length", type=int, help="max tokens per example")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    g.add_argument("--eval-every", type=int, help="evaluate every N steps (default: once per epoch)")
    g.add_argument("--scheduler", help="linear, cosine, constant, ... (transformers schedules)")
    g.add_argument("--warmup-ratio", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--dynamic-every", type=float, help="dynamic: re-score every this fraction of an epoch")
    g.add_argument("--proxy", help="dynamic: the scoring proxy (default: the proxies package's "
                                   "default; 'live-grad-norm': grad-norm of each module's own weights)")
    g.add_argument("--group-by-length", action="store_true",
                   help="batch rows of similar lengths (less padding; faster, above all on CPU)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    o = p.add_argument_group("output")
    o.add_argument("--output-dir", help="where to write (default: runs/<plan name>)")
    o.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output-dir")
    o.add_argument("--merge", action="store_true", help="also save the merged full model")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = p.add_argument_group("task (default: the plan's task)")
    d.add_argument("--task", help="GLUE task name or sst2-sample")
    d.add_argument("--data-dir", help="local GLUE folder (<dir>/MRPC/train.tsv, ...)")
    d.add_argument("--train-file", help="CSV, TSV or JSON Lines")
    d.add_argument("--validation-file", help="CSV, TSV or JSON Lines (default: hold out 10%% of train)")
    d.add_argument("--text-columns", help="one or two comma-separated text columns "
                                          "(causal LM: prompt,response)")
    d.add_argument("--label-column")
    d.add_argument("--task-type", choices=["classification", "regression", "causal_lm"])
    d.add_argument("--max-train-samples", type=int, help="train on a fixed random subset")
    return p


def _main(argv=None):
    from ..plan import Plan
    from ..train import TrainConfig, train

    args = build_parser().parse_args(argv)
    plan = Plan.load(args.plan)
    output_dir = args.output_dir or str(Path("runs") / Path(args.plan).stem)
    cfg = TrainConfig.from_plan(
        plan, allocation=args.allocation, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        seed=args.seed, max_length=args.max_length, max_steps=args.max_steps,
        eval_every=args.eval_every, scheduler=args.scheduler, warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay, dynamic_every=args.dynamic_every, dynamic_proxy=args.proxy,
        device=args.device, group_by_length=args.group_by_length or None,
        output_dir=output_dir,
        resume=args.resume or None, merge=args.merge or None,
        progress=False if args.no_progress else None, task=args.task, data_dir=args.data_dir,
        train_file=args.train_file, validation_file=args.validation_file,
        text_columns=args.text_columns, label_column=args.label_column, task_type=args.task_type,
        max_train_samples=args.max_train_samples,
    )
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
