"""more-train: train a plan (static or dynamic allocation) and save adapters, metrics, exports.

Defaults come from the plan's ``training`` hints and ``task`` options; flags override them.
Flags take transformers' TrainingArguments / run_glue.py names (``--learning_rate``), dashed
(``--learning-rate``), and the older spellings (``--lr``, ``--batch-size``, ``--epochs``).
On success the last line on stdout is a JSON summary of the run.  Exit status: 0 a finished run
(a stall it met is named on stderr and in results.json), 2 a user error, 3 a run that
``--on_stall stop`` ended (its outputs are written), 130 interrupted.  Under ``torchrun`` every
rank trains; rank 0 alone writes the run and prints (the others print errors only).
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError
from ..plan import Plan
from ..train import TrainConfig, train
from ..train.distributed import end_processes, is_main_process
from ..train.outdir import default_output_dir
from ..train.stall import STOPPED_EXIT
from ..train.trainer import Interrupted
from . import quiet_libraries, run_cli
from .flags import add_flags


# more-train's flags, by group: TrainConfig fields (the task ones from TaskSpec); a flag not given
# leaves the plan's value (then the TrainConfig default) in place.
TRAINING = ["allocation", "num_train_epochs", "learning_rate", "per_device_train_batch_size",
            "gradient_accumulation_steps", "seed", "max_length", "max_steps", "eval_steps",
            "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_grad_norm", "per_device_eval_batch_size",
            "dynamic_every", "dynamic_batches", "dynamic_proxy", "group_by_length", "device", "bf16",
            "bf16_frozen_base", "fp16", "gradient_checkpointing", "on_stall", "stall_restarts", "stall_lr_factor"]
OUTPUT = ["output_dir", "resume", "overwrite_output_dir", "merge", "report_to", "logging_steps", "save_steps",
          "save_total_limit", "export_peft"]
TASK = ["task", "data_dir", "train_file", "validation_file", "text_columns", "label_column", "task_type",
        "num_labels", "max_train_samples", "max_eval_samples", "data_seed"]


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
    for title, names in (("training (default: the plan's training hints)", TRAINING), ("output", OUTPUT),
                         ("task (default: the plan's task)", TASK)):
        g = p.add_argument_group(title)
        add_flags(g, TrainConfig, names, use_defaults=False, underscores=True)
        if names is OUTPUT:
            g.add_argument("--no-progress", "--no_progress", dest="progress", action="store_false",
                           default=None, help="no progress bar")
    return p


def _main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        plan = Plan.load(args.plan)
    except (TypeError, AttributeError, KeyError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        # a backstop: Plan.load checks each field's type; whatever slips through is still the plan's fault
        raise UserError(f"plan {args.plan!r} is invalid ({type(e).__name__}: {e}); write it with "
                        f"more-search or fix that field") from None
    if args.model:
        plan.model = {**(plan.model or {}), "name_or_path": args.model}
    given = {n: getattr(args, n) for n in TRAINING + OUTPUT + TASK + ["progress"]}
    if given["progress"] is False:
        quiet_libraries()
    if given["resume"] and not args.output_dir:
        raise UserError("--resume needs the --output_dir of the run to continue")
    given["output_dir"] = args.output_dir or str(default_output_dir(args.plan))  # never an earlier run's
    cfg = TrainConfig.from_plan(plan, **given)
    try:
        result = train(plan, cfg)
    except Interrupted as e:  # one line: what was kept and how to continue
        if is_main_process():
            print(e, file=sys.stderr)
        return 130
    code = STOPPED_EXIT if result.stall is not None and result.stall["action"] == "stop" else 0
    main = is_main_process()
    end_processes()  # after a run that ended well on every rank (a failed one exits as it is)
    if not main:  # DDP: rank 0 prints the summary
        return code
    print(f"{result.main_metric} = {result.score:.4f} after {result.steps} steps; "
          f"outputs in {result.output_dir}", file=sys.stderr)
    if result.merge_report is not None:
        rep = result.merge_report
        print(f"merged model: {len(rep['merged'])} adapter(s) folded"
              + (f"; not foldable (saved beside it as residual_plan.json): {', '.join(rep['not_foldable'])}"
                 if rep["not_foldable"] else ""), file=sys.stderr)
    stall = result.stall
    if stall is not None:
        print(f"stalled: training had not taken off at step {stall['step']} (held-out loss "
              f"{stall['heldout_loss']:.4f}, start {stall['start_loss']:.4f}"
              + (f"; {stall['metric_name']} {stall['metric']:.4f}, chance {stall['chance']:.4f}"
                 if stall["metric_name"] else "") + f"); {stall['suggestion']}", file=sys.stderr)
    summary = {k: getattr(result, k) for k in ("main_metric", "score", "metrics", "steps", "train_time_s",
                                                "step_time_s", "peak_memory_bytes", "trainable_params",
                                                "output_dir", "peft_dir", "merge_report", "stall")}
    print(json.dumps(summary))
    return code


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
