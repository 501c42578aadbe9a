"""Training a plan on transformers' Trainer: mixed precision, accumulation, checkpointing, DDP.

    result = train(plan, TrainConfig.from_plan(plan, num_train_epochs=1), on_eval=callback)

``train`` loads the plan's model and task (or takes the ones given), injects the plan, and runs
``AdapterTrainer`` (a ``transformers.Trainer``): bf16/fp16 autocast, gradient accumulation,
gradient checkpointing, ``torchrun``/``accelerate launch`` multi-GPU, ``report_to``, rotated
checkpoints and resume, length-grouped batches all come from the library.  What is ours: the
task metrics, dynamic allocation and the search's hook (callbacks), checkpoints that hold only
the trained tensors, and a resume that refuses other settings or data.  Outputs: nas.train.outputs.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import transformers
from torch import nn

from search_spaces.anatomy import HEAD_NAMES, discover
from search_spaces.attach import adapters, shortcut_set

from ..data.taskdata import row_lengths
from ..errors import UserError
from ..heads import set_pooling
from ..inject import apply_plan, save_adapted
from ..io import atomic_write_text
from ..models import load_model, load_tokenizer
from ..plan import Plan
from .callbacks import DynamicAllocation, EvaluateAtEnd, OnEval, ResumeState, StepStats
from .config import NonFiniteLoss, TrainConfig, TrainResult
from .distributed import start_processes, steps_per_epoch, sum_over_ranks, world_size
from .dynamic import DynamicAllocator
from .evaluate import evaluate_model
from .outdir import (AtomicCheckpoints, Claim, check_output_dir, last_complete_checkpoint, remove_incomplete,
                     run_contents)
from .outputs import CONFIG_NAME, remove_outputs, write_outputs
from .precision import check_precision, frozen_base_to, resolve_device, restore_frozen_base
from .stall import Attempts
from .support import (GroupedSampler, close_logger, enabled_adapter_params, forward_keys, is_causal_lm,
                      open_log_file, run_logger, warn_over_budget)

# Test hook for the crash drills (tests/nas/train/test_drills.py), off unless set: seconds to
# sleep before each training step, so a signal lands mid-epoch (and nas.train.outdir.SAVE_PAUSE_ENV).
STEP_PAUSE_ENV = "MORE_TRAIN_TEST_STEP_PAUSE"

# Settings that must match to resume a run.
RESUME_KEYS = ("num_train_epochs", "learning_rate", "per_device_train_batch_size",
               "gradient_accumulation_steps", "max_length", "seed", "allocation", "max_steps", "eval_steps",
               "warmup_ratio", "weight_decay", "lr_scheduler_type", "dynamic_every", "dynamic_batches",
               "dynamic_proxy", "max_grad_norm", "bf16", "bf16_frozen_base", "fp16")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during ``train``; the message says what was kept and how to continue."""


class AdapterTrainer(AtomicCheckpoints, transformers.Trainer):
    """transformers.Trainer with our metrics, a NaN check, and checkpoints of trained tensors only."""

    def __init__(self, *args, data, history: list[dict], **kwargs):
        super().__init__(*args, **kwargs)
        self.data, self.history = data, history
        self._loss_sum, self._loss_n = 0.0, 0
        if data.task_type != "causal_lm":
            # A classification head's loss is a mean over its micro-batch and ignores the
            # ``num_items_in_batch`` transformers passes to any forward taking **kwargs; left
            # on, Trainer would not divide it by the accumulation steps (gradients k times too big).
            self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset=None):
        # transformers measures every row in Python when the dataset has no length column
        # (seconds on 50k rows, paid by each search trial); arrow reads the lengths at once.
        ds = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or \
                "input_ids" not in (getattr(ds, "column_names", None) or ()):  # not a datasets.Dataset
            return super()._get_train_sampler(train_dataset)
        # Groups of a whole step's rows, every rank's (DDP splits them): N processes see one's rows.
        step_rows = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return GroupedSampler(step_rows, row_lengths(ds), self.args.max_steps)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if os.environ.get(STEP_PAUSE_ENV):
            time.sleep(float(os.environ[STEP_PAUSE_ENV]))
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = float(loss) * self.args.gradient_accumulation_steps
        if not math.isfinite(value):
            raise NonFiniteLoss(self.state.global_step + 1, value)
        self._loss_sum += value / self.args.gradient_accumulation_steps
        self._loss_n += 1 / self.args.gradient_accumulation_steps
        return loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        model = self.accelerator.unwrap_model(self.model)
        bs = self.args.per_device_eval_batch_size
        metrics = evaluate_model(model, self.data, bs, self.args.device, self.autocast_smart_context_manager())
        s = self.state.global_step
        # DDP: the loss of every rank's micro-batches (each rank evaluates the same weights)
        loss_sum, loss_n = sum_over_ranks(self.accelerator, self._loss_sum, self._loss_n)
        entry = {"step": s, "epoch": round(self.state.epoch or 0.0, 4), **metrics,
                 "train_loss": loss_sum / max(loss_n, 1e-9), "lr": self._get_learning_rate()}
        self._loss_sum, self._loss_n = 0.0, 0
        self.history.append(entry)
        out = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log(out)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, out)
        return out

    def _save(self, output_dir: str | None = None, state_dict=None):
        """A checkpoint holds the plan and the trained tensors only (as a PEFT checkpoint)."""
        out = Path(output_dir or self.args.output_dir)
        if self.args.should_save:
            save_adapted(self.accelerator.unwrap_model(self.model), out)
            torch.save(self.args, out / transformers.trainer.TRAINING_ARGS_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from safetensors.torch import load_file

        from ..inject import WEIGHTS_NAME

        model = self.accelerator.unwrap_model(model or self.model)
        tensors = load_file(str(Path(resume_from_checkpoint) / WEIGHTS_NAME))
        ref = next(model.parameters())
        _, unexpected = model.load_state_dict({k: v.to(ref.device) for k, v in tensors.items()}, strict=False)
        if unexpected:
            raise UserError(f"cannot resume from {resume_from_checkpoint}: tensors {unexpected[:3]} do "
                            f"not fit the model")


def training_args(cfg: TrainConfig, out: str, n_train: int, device: torch.device, *,
                  unused_params: bool) -> transformers.TrainingArguments:
    per_epoch = steps_per_epoch(n_train, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps)
    every = cfg.eval_steps or per_epoch
    saving = cfg.output_dir is not None
    return transformers.TrainingArguments(
        output_dir=out, seed=cfg.seed, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size or cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio, max_grad_norm=cfg.max_grad_norm or 0.0, optim="adamw_torch",
        bf16=cfg.bf16, fp16=cfg.fp16, use_cpu=device.type == "cpu",
        # Only when asked: passing the flag at all warns about its transformers-6 rename.
        **({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
           if cfg.gradient_checkpointing else {}),
        eval_strategy="steps", eval_steps=every, logging_steps=cfg.logging_steps,
        save_strategy="steps" if saving else "no", save_steps=cfg.save_steps or every,
        save_total_limit=cfg.save_total_limit, report_to=cfg.report_to, disable_tqdm=not cfg.progress,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        dataloader_pin_memory=device.type == "cuda",
        ddp_find_unused_parameters=unused_params, remove_unused_columns=True, label_names=["labels"],
    )


def setup(plan: Plan, cfg: TrainConfig, *, model=None, tokenizer=None, data=None, log=None):
    """Load (or take) task and model, check they fit, inject the plan; -> (model, data, layout,
    allocator or None)."""
    from transformers import set_seed

    set_seed(cfg.seed)
    name, revision = (plan.model or {}).get("name_or_path"), (plan.model or {}).get("revision")
    if data is None:
        tokenizer = tokenizer or load_tokenizer(name, revision=revision)
        data = cfg.load(tokenizer)
    if len(data.train) == 0:
        raise UserError(f"task {data.name!r} has no training rows")
    log.info("task %s: %s (%s; main metric %s)", data.name, data.source, data, data.main_metric)
    if model is None:
        set_seed(cfg.seed)
        model = load_model(name, task_type=data.task_type, num_labels=data.num_labels, revision=revision,
                           pooling=plan.pooling)
    elif adapters(model) or shortcut_set(model) is not None:
        raise ValueError("train(model=...) expects a base model without adapters")
    else:
        set_pooling(model, plan.pooling)  # a caller's model reads what the plan says (no-op when it does)
    if data.task_type == "causal_lm" and not is_causal_lm(model):
        raise UserError(f"task {data.name!r} is causal-LM data (prompt/response) but the model "
                        f"{type(model).__name__} has no language-model head")
    if data.task_type != "causal_lm":
        if is_causal_lm(model):
            raise UserError(f"task {data.name!r} is {data.task_type} but the model {type(model).__name__} "
                            f"is a causal LM; load it with a classification head")
        data.check_head(int(model.config.num_labels))
    layout = discover(model)
    set_seed(cfg.seed)
    apply_plan(model, plan, layout)  # PlanError (a UserError) when the plan is for another model
    if cfg.allocation == "static":
        warn_over_budget(plan, enabled_adapter_params(model), log)
    allocator = None
    if cfg.allocation == "dynamic":
        allocator = DynamicAllocator(model, layout, budget=(plan.budget or {}).get("params"),
                                     proxy=cfg.dynamic_proxy, plan=plan, seed=cfg.seed)
        log.info("dynamic allocation: %d candidates, budget %d params, re-scored every %.2f epoch with %s",
                 len(allocator.pool), allocator.budget, cfg.dynamic_every, allocator.score_name)
    return model, data, layout, allocator


def prepare(plan: Plan, cfg: TrainConfig, *, model=None, tokenizer=None, data=None,
            on_eval: Callable[[int, dict], None] | None = None, logger: logging.Logger | None = None,
            callbacks: list | None = None) -> AdapterTrainer:
    """Check device and precision, load (or take) model, tokenizer and task, inject the plan and
    build the AdapterTrainer (``trainer.train()`` runs it; ``train()`` does all of this)."""
    cfg.validate()
    device = resolve_device(cfg.device)  # before anything loads
    check_precision(device, cfg.bf16, cfg.fp16)
    start_processes(device)  # DDP: rank known before loading (its messages), steps per epoch
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    log = logger or logging.getLogger("nas.train")
    model, data, layout, allocator = setup(plan, cfg, model=model, tokenizer=tokenizer, data=data, log=log)
    originals = frozen_base_to(model, torch.bfloat16) if cfg.bf16 and cfg.bf16_frozen_base else {}
    out = cfg.output_dir or tempfile.mkdtemp(prefix="more-train-")
    any_off = any(not a.enabled for a in adapters(model).values())
    args = training_args(cfg, out, len(data.train), device, unused_params=allocator is not None or any_off)
    history: list[dict] = []
    stats = StepStats(device)
    cbs = [EvaluateAtEnd(), stats, OnEval(history, on_eval, Path(cfg.output_dir) if cfg.output_dir else None)]
    identity = {"config": {k: getattr(cfg, k) for k in RESUME_KEYS}, "data": data.fingerprint(),
                "plan_keys": sorted(plan.modules) + sorted(plan.shortcuts)}
    resume = ResumeState(identity, history, allocator)
    cbs.append(resume)
    if allocator is not None:
        collate, keys = data.collator(), forward_keys(model)
        bs = cfg.per_device_train_batch_size * world_size()  # DDP: every rank scores all ranks' rows

        def scoring_batches(step: int) -> list[dict]:
            g = torch.Generator().manual_seed(cfg.seed * 7919 + step)
            perm = torch.randperm(len(data.train), generator=g).tolist()
            dev = next(model.parameters()).device
            batches = []
            for i in range(max(1, cfg.dynamic_batches)):
                idx = perm[i * bs:(i + 1) * bs]
                if idx:
                    cols = data.train[idx]
                    rows = [dict(zip(cols, v)) for v in zip(*cols.values())]
                    batches.append({k: v.to(dev) for k, v in collate(rows).items() if keys is None or k in keys})
            return batches

        per_epoch = steps_per_epoch(len(data.train), cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps)
        every = max(1, round(cfg.dynamic_every * per_epoch))
        cbs.append(DynamicAllocation(allocator, scoring_batches, every, log))
    trainer = AdapterTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                             data_collator=data.collator(), callbacks=cbs + list(callbacks or []),
                             data=data, history=history)
    if not cfg.progress:  # no per-log dicts on stdout (the CLI's last line is its JSON summary)
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.plan, trainer.allocator, trainer.stats, trainer.resume_state = plan, allocator, stats, resume
    trainer.frozen_originals = originals
    trainer.scratch_dir = None if cfg.output_dir else out  # run() removes only a folder it made
    trainer.scoring_batches = scoring_batches if allocator is not None else None
    return trainer


def trainer_for(model: nn.Module, data, cfg: TrainConfig, callbacks: list | None = None) -> AdapterTrainer:
    """An AdapterTrainer for any model whose trainable parameters are already set (a PEFT model,
    a head-only baseline), so baselines train in exactly the same loop as plans."""
    device = resolve_device(cfg.device)
    check_precision(device, cfg.bf16, cfg.fp16)
    start_processes(device)
    stats = StepStats(device)
    out = cfg.output_dir or tempfile.mkdtemp(prefix="more-train-")
    args = training_args(cfg, out, len(data.train), device, unused_params=False)
    history: list[dict] = []
    cbs = [EvaluateAtEnd(), stats] + list(callbacks or [])
    tr = AdapterTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                        data_collator=data.collator(), callbacks=cbs, data=data, history=history)
    if not cfg.progress:
        tr.remove_callback(transformers.trainer_callback.PrinterCallback)
    tr.plan, tr.allocator, tr.stats, tr.frozen_originals = None, None, stats, {}
    tr.scratch_dir = None if cfg.output_dir else out
    return tr


def run(trainer: AdapterTrainer) -> TrainResult:
    """``trainer.train()`` and its TrainResult (no output files)."""
    t0 = time.perf_counter()
    try:
        trainer.train()
        return _result(trainer, time.perf_counter() - t0, None)
    finally:
        if getattr(trainer, "scratch_dir", None):  # never a folder the user named
            shutil.rmtree(trainer.scratch_dir, ignore_errors=True)


def train(plan: Plan, cfg: TrainConfig, *, model=None, tokenizer=None, data=None,
          on_eval: Callable[[int, dict], None] | None = None, callbacks: list | None = None) -> TrainResult:
    """Train ``plan`` with ``cfg``.

    ``model``: an already-loaded base model (no adapters) to adapt in place instead of loading
    ``plan.model["name_or_path"]``; ``data``: a pre-built TaskData (e.g. ``data.holdout(...)``);
    ``on_eval(step, metrics)`` runs after each evaluation and its exceptions propagate (the
    search raises optuna.TrialPruned from it); ``callbacks``: more TrainerCallbacks.
    Raises NonFiniteLoss on a NaN/inf loss.  With ``merge=True`` the model is merged in place.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    check_precision(device, cfg.bf16, cfg.fp16)  # before anything loads or is written
    out = Path(cfg.output_dir) if cfg.output_dir else None
    if out is not None:
        check_output_dir(out, resume=cfg.resume, overwrite=cfg.overwrite_output_dir)
        claim = Claim(out)
    # DDP: the ranks meet after checking the folder; the main one alone writes and logs
    main = start_processes(device)
    # train.log is held in memory until the run has passed its checks: a failed start writes nothing
    logger = run_logger(out if main else None, cfg.progress and main, deferred=True)
    trainer, attempts, log_open = None, Attempts(cfg, model), False
    try:
        ckpt = last_complete_checkpoint(out) if out is not None and cfg.resume else None
        cfg = attempts.resumed(ckpt)  # a restarted run resumes at its attempt's rate
        while True:
            trainer = prepare(plan, cfg, model=model, tokenizer=tokenizer, data=data, on_eval=on_eval,
                              logger=logger, callbacks=callbacks)
            attempts.watch(trainer, logger)
            if ckpt is not None:
                trainer.resume_state.check_and_load(ckpt)
                for name in (remove_incomplete(out) if trainer.args.should_save else []):
                    logger.info("removed %s: a checkpoint whose write was cut short", name)
                logger.info("resuming from %s", ckpt)
            elif out is not None and cfg.overwrite_output_dir and trainer.args.should_save \
                    and run_contents(out):  # DDP: rank 0 removes it
                logger.info("--overwrite_output_dir: removing the earlier run in %s", out)
                remove_outputs(out)
                remove_incomplete(out)
                claim = Claim(out)
            if out is not None and trainer.args.should_save:
                if not log_open:
                    open_log_file(logger, out)
                    log_open = True
                resolved = {**cfg.to_dict(), "task": trainer.data.name, "task_type": trainer.data.task_type,
                            "num_labels": trainer.data.num_labels}
                atomic_write_text(out / CONFIG_NAME, json.dumps(resolved, indent=2, default=str) + "\n")
            logger.info("training: batch %d x %d accumulation, lr %g, %s schedule, %s allocation, %s%s on %s",
                        cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.learning_rate,
                        cfg.lr_scheduler_type, cfg.allocation, "bf16" if cfg.bf16 else "fp16" if cfg.fp16 else "fp32",
                        " + gradient checkpointing" if cfg.gradient_checkpointing else "", trainer.args.device)
            t0 = time.perf_counter()
            trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
            if not attempts.stalled():
                break
            # A fresh run at the lower rate, on the data already loaded.
            restore_frozen_base(trainer.accelerator.unwrap_model(trainer.model), trainer.frozen_originals)
            trainer.frozen_originals = {}
            attempts.restart(trainer, out, model, logger)
            cfg, data, tokenizer, ckpt = attempts.cfg, trainer.data, trainer.data.tokenizer, None
        result = _result(trainer, time.perf_counter() - t0, out)
        result.stall, result.stall_check = attempts.report()
        model = trainer.accelerator.unwrap_model(trainer.model)
        restore_frozen_base(model, trainer.frozen_originals)
        if out is not None and trainer.args.should_save:
            write_outputs(model, plan, trainer.data, result, out, allocator=trainer.allocator,
                          export_peft=cfg.export_peft, merge=cfg.merge, logger=logger)
        logger.info("done: %s = %.4f after %d steps (%.1f s, %.3f s/step)", result.main_metric, result.score,
                    result.steps, result.train_time_s, result.step_time_s)
        return result
    except BaseException as e:
        if out is not None:
            kept = claim.new_checkpoint() or (last_complete_checkpoint(out) if cfg.resume else None)
            if kept is None:  # nothing to resume: remove what this command wrote, nothing else
                if main:  # (DDP: rank 0 wrote it)
                    claim.rollback()
            elif isinstance(e, KeyboardInterrupt):
                raise Interrupted(f"interrupted; {kept} is kept: continue with --resume "
                                  f"--output_dir {out}") from None
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted("interrupted before the first checkpoint; nothing was kept") from None
        raise
    finally:
        if trainer is not None and trainer.frozen_originals:
            restore_frozen_base(trainer.accelerator.unwrap_model(trainer.model), trainer.frozen_originals)
        if trainer is not None and out is None:
            shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
        close_logger(logger)


def _result(trainer: AdapterTrainer, seconds: float, out: Path | None) -> TrainResult:
    history = trainer.history
    if not history:
        trainer.evaluate()
    final = {k: v for k, v in history[-1].items() if k not in ("step", "epoch", "train_loss", "lr")}
    main = trainer.data.main_metric
    model = trainer.accelerator.unwrap_model(trainer.model)
    enabled_ad = enabled_adapter_params(model)
    head = sum(p.numel() for n, c in model.named_children() if n in HEAD_NAMES for p in c.parameters()
               if p.requires_grad)
    if trainer.plan is None:  # a baseline (PEFT, head only): whatever requires a gradient trains
        enabled_ad = sum(p.numel() for p in model.parameters() if p.requires_grad) - head
    return TrainResult(
        metrics=final, main_metric=main, score=float(final.get(main, float("nan"))), history=list(history),
        steps=trainer.state.global_step, train_time_s=seconds, step_time_s=trainer.stats.step_time,
        step_cpu_s=trainer.stats.step_cpu,
        peak_memory_bytes=trainer.stats.value(), trainable_params=int(enabled_ad + head),
        output_dir=str(out) if out else None,
        enable_counts=dict(trainer.allocator.counts) if trainer.allocator is not None else None,
        adapter_params=int(enabled_ad), peak_memory_kind=trainer.stats.kind)


__all__ = ["AdapterTrainer", "evaluate_model", "prepare", "run", "train", "trainer_for", "training_args"]
