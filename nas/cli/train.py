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


_GROUPS = {"output": ("output_dir", "resume", "merge", "progress", "report_to", "save_steps",
                      "save_total_limit", "logging_steps", "export_peft"),
           "task (default: the plan's task)": ("task", "data_dir", "train_file", "validation_file",
                                               "text_columns", "label_column", "task_type", "num_labels",
                                               "max_train_samples", "max_eval_samples", "data_seed")}
_CHOICES = {"allocation": ["static", "dynamic"], "task_type": ["classification", "regression", "causal_lm"]}


def _scalar(tp: str):
    for name, conv in (("int", int), ("float", float)):
        if tp.startswith(name):
            return conv
    return str


def add_config_flags(p: argparse.ArgumentParser, cls=None) -> None:
    """One flag per TrainConfig field, named as in TrainingArguments (``--learning_rate``), with
    its dashed spelling and older names (``--lr``, ``--batch-size``) as aliases; help and
    defaults come from the field (the plan's training hints fill what is not given)."""
    import dataclasses

    from ..train.config import TrainConfig

    groups = {"training (default: the plan's training hints)": p.add_argument_group(
        "training (default: the plan's training hints)")}
    groups.update({g: p.add_argument_group(g) for g in _GROUPS})
    for f in dataclasses.fields(cls or TrainConfig):
        where = next((g for g, names in _GROUPS.items() if f.name in names),
                     "training (default: the plan's training hints)")
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        flags += [a for a in f.metadata["aliases"] if a != "--name"]
        if f.name == "progress":
            groups[where].add_argument("--no-progress", "--no_progress", dest="progress",
                                       action="store_false", default=None, help="no progress bar")
            continue
        tp = str(f.type)
        text = f.metadata["help"] + (f" (default {f.default})" if f.default not in (None, False) else "")
        kw = {"help": text.replace("%", "%%"), "dest": f.name, "default": None}
        if tp == "bool":
            kw["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        else:
            kw["type"] = _scalar(tp)
            if f.name in _CHOICES:
                kw["choices"] = _CHOICES[f.name]
        groups[where].add_argument(*dict.fromkeys(flags), **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="more-train",
        description="Train an adapter plan (from more-search) on a task and save the result. Flags take "
                    "the names of transformers' TrainingArguments / run_glue.py (--learning_rate, "
                    "--per_device_train_batch_size, --bf16, ...); older spellings (--lr, --batch-size, "
                    "--epochs) still work. Multi-GPU: torchrun --nproc_per_node N -m nas.cli.train ...",
        epilog="Tasks: GLUE by name (cola sst2 mrpc qqp stsb mnli qnli rte wnli; from --data-dir in "
               "the original GLUE layout, or the Hub/cache), sst2-sample (bundled, the default), or "
               "your own --train-file/--validation-file (CSV, TSV, JSON Lines).",
    )
    p.add_argument("--plan", required=True, help="plan JSON written by more-search")
    p.add_argument("--model", help="train the plan on this local copy (or Hub name) of its model")
    add_config_flags(p)
    return p


def _main(argv=None):
    import dataclasses

    from ..plan import Plan
    from ..train import TrainConfig, train

    args = build_parser().parse_args(argv)
    plan = Plan.load(args.plan)
    if args.model:
        plan.model = {**(plan.model or {}), "name_or_path": args.model}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["output_dir"] = values["output_dir"] or str(Path("runs") / Path(args.plan).stem)
    cfg = TrainConfig.from_plan(plan, **values)
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
