"""more-search: find the adapter plan for a model, a task and a parameter budget."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..errors import UserError
from . import run_cli


def parse_duration(text: str) -> float:
    """'15m', '900s', '1.5h', '900' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if not m:
        raise UserError(f"--time-budget {text!r} is not understood; write e.g. 900s, 15m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="more-search",
        description="Search per-module adapter choices (LoRA, MoRe, SURM, HeteroLoRA shortcuts) under "
                    "a trainable-parameter budget and write the best plan as JSON. With no arguments: "
                    "the packaged MiniLM on the bundled SST-2 sample.",
    )
    g = p.add_argument_group("what to search for")
    g.add_argument("--model", help="Hub name, local folder, .gguf file, or 'minilm' (default) / 'smollm2'")
    g.add_argument("--task", help="GLUE task name (sst2, mrpc, cola, rte, ...), 'sst2-sample' (default), "
                                  "or omit with --train-file")
    g.add_argument("--budget", default="0.1%",
                   help="trainable adapter+shortcut parameters: a percentage of the base model "
                        "('0.1%%') or a count ('200k', '1.5M'); the task head is not counted (default 0.1%%)")
    g.add_argument("--space", default="default",
                   help="search space: default, lora, more, surm, heterolora, or a JSON file")
    g.add_argument("--proxy", help="zero-cost proxy (default: the proxies package's best-ranking one)")
    g.add_argument("--allocation", choices=["static", "dynamic"], default="static",
                   help="how trials (and the plan's full run) allocate modules")
    o = p.add_argument_group("output and storage")
    o.add_argument("-o", "--output", default="search-out",
                   help="output folder, or a path ending in .json to also write the plan there "
                        "(the folder is then <name>.search beside it)")
    o.add_argument("--storage", help="Optuna storage URL shared by several workers, e.g. "
                                     "postgresql://user:pw@host/db (default: a journal file in the output folder)")
    o.add_argument("--study", help="study name in the storage (default more-search)")
    o.add_argument("--resume", action="store_true", help="continue an interrupted search in the output folder")
    t = p.add_argument_group("trial budget")
    t.add_argument("--trials", type=int, default=10, help="number of finished trials to aim for (default 10)")
    t.add_argument("--time-budget", help="wall-clock limit of the trial stage, e.g. 15m")
    t.add_argument("--trial-steps", type=int, default=120, help="optimizer steps of one full trial (default 120)")
    t.add_argument("--pruner", default="hyperband", choices=["hyperband", "halving", "median", "none"])
    t.add_argument("--sampler", default="tpe", choices=["tpe", "random"])
    t.add_argument("--holdout", type=float, default=0.2, help="part of train that scores the trials")
    t.add_argument("--seed", type=int, default=0)
    d = p.add_argument_group("data and training (as more-train)")
    d.add_argument("--data-dir", help="local GLUE folder with the original TSV layout")
    d.add_argument("--train-file")
    d.add_argument("--validation-file")
    d.add_argument("--text-columns", help="one or two comma-separated text columns")
    d.add_argument("--label-column")
    d.add_argument("--max-train-samples", type=int)
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--max-length", type=int, default=128)
    d.add_argument("--lr", type=float, default=1e-3, help="learning rate of the first (proxy) trial")
    d.add_argument("--epochs", type=float, default=3, help="epochs hint written into the plan")
    d.add_argument("--device", help="where the trials train: cpu, cuda, cuda:1 (default: cuda when available)")
    d.add_argument("--bf16", action="store_true", help="trials in bfloat16 mixed precision")
    d.add_argument("--fp16", action="store_true", help="trials in float16 mixed precision (CUDA)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..search import SearchConfig, run_search

    out = Path(args.output)
    plan_copy = None
    if out.suffix == ".json":
        plan_copy, out = out, out.with_suffix(".search")
    if args.trials < 1 or args.trial_steps < 1:
        raise UserError("--trials and --trial-steps must be at least 1")
    if not 0 < args.holdout < 1:
        raise UserError("--holdout must be a fraction between 0 and 1, e.g. 0.2")
    from ..train.precision import check_precision, resolve_device

    if args.bf16 and args.fp16:
        raise UserError("choose one of --bf16 and --fp16")
    check_precision(resolve_device(args.device), args.bf16, args.fp16)  # before anything loads
    cfg = SearchConfig(
        device=args.device, bf16=args.bf16, fp16=args.fp16,
        model=args.model, task=args.task, budget=args.budget, space=args.space, proxy=args.proxy,
        output_dir=str(out), n_trials=args.trials,
        timeout_s=parse_duration(args.time_budget) if args.time_budget else None,
        trial_steps=args.trial_steps, holdout=args.holdout, max_train_samples=args.max_train_samples,
        batch_size=args.batch_size, max_length=args.max_length, lr=args.lr, epochs=args.epochs,
        allocation=args.allocation, pruner=args.pruner, sampler=args.sampler, storage=args.storage,
        study=args.study, resume=args.resume, seed=args.seed, progress=not args.quiet,
        data_dir=args.data_dir, train_file=args.train_file, validation_file=args.validation_file,
        text_columns=args.text_columns, label_column=args.label_column,
    )
    res = run_search(cfg)
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
