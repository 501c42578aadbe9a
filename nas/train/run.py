"""Training a plan: a plain PyTorch loop with AdamW, warmup schedules and dynamic padding.

    result = train(plan, TrainConfig.from_plan(plan, epochs=1), on_eval=callback)

``train`` loads the plan's model and task (or uses the ones given), injects the plan
(``nas.apply_plan``), trains the adapters, shortcuts and task head, evaluates once per epoch or
every ``eval_every`` steps, and writes to ``output_dir``:

    plan.json               the plan with the final on/off state of each module
    adapters.safetensors    adapter + shortcut + task-head tensors (nas.trainable_state_dict)
    metrics.jsonl           one line per evaluation
    train.log               the training log
    checkpoint.pt           everything ``resume`` needs (written atomically)
    results.json            the final TrainResult
    enable_counts.json, enable_heatmap.png     (dynamic allocation)
    peft_adapter/           a PEFT LoRA adapter, when the plan is pure LoRA
    merged/                 (merge=True) the merged full model + tokenizer + merge_report.json

The loop itself (``Trainer``) also trains any model whose trainable parameters are set, e.g. a
PEFT model, so baselines run through exactly the same code.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from torch import nn

from search_spaces.anatomy import discover
from search_spaces.attach import adapters, shortcut_set

from ..errors import UserError
from ..inject import apply_plan
from ..io import atomic_write_text
from ..models import load_model, load_tokenizer
from ..plan import Plan
from .config import CHECKPOINT, TrainConfig, TrainResult
from .dynamic import DynamicAllocator
from .loop import Trainer
from .outputs import remove_outputs, write_outputs
from .support import close_logger, run_logger


# ---- train(plan) --------------------------------------------------------------------------
def _is_causal_lm(model: nn.Module) -> bool:
    return hasattr(model, "lm_head") or type(model).__name__.endswith("ForCausalLM")


def prepare(plan: Plan, cfg: TrainConfig, *, model=None, tokenizer=None, data=None,
            on_eval: Callable[[int, dict], None] | None = None,
            logger: logging.Logger | None = None) -> Trainer:
    """Load (or take) model, tokenizer and task, inject the plan, and build the Trainer."""
    from transformers import set_seed


    cfg.validate()
    log = logger or logging.getLogger("nas.trainer")
    set_seed(cfg.seed)
    name = (plan.model or {}).get("name_or_path")
    revision = (plan.model or {}).get("revision")
    if data is None:
        if tokenizer is None:
            tokenizer = load_tokenizer(name, revision=revision)
        data = cfg.load(tokenizer)
    log.info("task %s: %s (%s; main metric %s)", data.name, data.source, data, data.main_metric)
    if model is None:
        set_seed(cfg.seed)
        model = load_model(name, task_type=data.task_type, num_labels=data.num_labels, revision=revision)
    elif adapters(model) or shortcut_set(model) is not None:
        raise ValueError("train(model=...) expects a base model without adapters")
    if data.task_type == "causal_lm":
        if not _is_causal_lm(model):
            raise UserError(f"task {data.name!r} is causal-LM data (prompt/response) but the model "
                            f"{type(model).__name__} has no language-model head")
    else:
        if _is_causal_lm(model):
            raise UserError(f"task {data.name!r} is {data.task_type} but the model "
                            f"{type(model).__name__} is a causal LM; load it with a classification head")
        data.check_head(int(model.config.num_labels))
    layout = discover(model)
    set_seed(cfg.seed)
    apply_plan(model, plan, layout)  # PlanError (a UserError) when the plan is for another model
    allocator = None
    if cfg.allocation == "dynamic":

        budget = (plan.budget or {}).get("params")
        allocator = DynamicAllocator(model, layout, budget=budget, proxy=cfg.dynamic_proxy, plan=plan,
                                     seed=cfg.seed)
        log.info("dynamic allocation: %d candidates, budget %d params, re-scored every %.2f epoch "
                 "with %s", len(allocator.pool), allocator.budget, cfg.dynamic_every, allocator.score_name)
    return Trainer(model, data, cfg, plan=plan, layout=layout, allocator=allocator,
                   on_eval=on_eval, output_dir=cfg.output_dir)


def train(plan: Plan, cfg: TrainConfig, *, model=None, tokenizer=None, data=None,
          on_eval: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train ``plan`` with ``cfg``.

    ``model``: an already-loaded base model (no adapters) to adapt in place instead of loading
    ``plan.model["name_or_path"]``; ``data``: a pre-built TaskData (e.g. ``data.holdout(...)``);
    ``on_eval(step, metrics)`` runs after each evaluation and its exceptions propagate (the
    search raises optuna.TrialPruned from it).  Raises NonFiniteLoss on a NaN/inf loss.
    With ``merge=True`` the model is merged in place at the end.
    """
    cfg.validate()
    out = Path(cfg.output_dir) if cfg.output_dir else None
    if out is not None and not cfg.resume:
        remove_outputs(out)
    logger = run_logger(out, cfg.progress)
    try:
        ckpt = out / CHECKPOINT if out else None
        trainer = prepare(plan, cfg, model=model, tokenizer=tokenizer, data=data, on_eval=on_eval,
                          logger=logger)
        if cfg.resume:
            if ckpt.exists():
                trainer.load_checkpoint(ckpt)
                logger.info("resumed from %s at step %d/%d", ckpt, trainer.step, trainer.total_steps)
            else:
                logger.info("no checkpoint in %s: starting from step 0", out)
        logger.info("training %d step(s) (%d per epoch), batch %d, lr %g, %s schedule, warmup %d, "
                    "%s allocation, %d trainable tensors on %s", trainer.total_steps,
                    trainer.steps_per_epoch, cfg.batch_size, cfg.lr, cfg.scheduler,
                    trainer.warmup_steps, cfg.allocation, len(trainer.params), trainer.device)
        if out is not None:
            resolved = {**cfg.to_dict(), "task": trainer.data.name, "task_type": trainer.data.task_type,
                        "num_labels": trainer.data.num_labels}
            atomic_write_text(out / "config.json", json.dumps(resolved, indent=2, default=str) + "\n")
        result = trainer.run(logger)
        if out is not None:
            write_outputs(trainer, plan, cfg, result, out, logger)
        logger.info("done: %s = %.4f after %d steps (%.1f s, %.3f s/step)", result.main_metric,
                    result.score, result.steps, result.train_time_s, result.step_time_s)
        return result
    finally:
        close_logger(logger)
