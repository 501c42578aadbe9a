"""Noticing a stalled run at its first evaluation, saying so, and restarting it at a lower rate.

A run whose held-out loss has not left its *start* (the lower of the untrained model's held-out
loss and the labels' prior's: learning the class frequencies is no signal) or whose metric sits
at chance (the majority class, zero correlation) has stalled.  On MiniLM LoRA such runs came with
some seeds at a rate that suits others and ended far below them, so a lower fixed rate is no cure:
the trainer has to notice.  ``train()`` adds ``StallCheck`` (a TrainerCallback) to every run with an
output folder: one evaluation before the first step (the start), one early check evaluation (kept
out of the run's history and of ``on_eval``), then each scheduled evaluation until the run is
healthy.  On a stall it warns, stops (``on_stall="stop"``) or restarts the run from the initial
adapters at ``stall_lr_factor`` times the rate (``Attempts``), exactly as a fresh run at that rate.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from ..data.taskdata import column
from ..inject import remove_plan
from .callbacks import RESUME_STATE
from .outdir import TMP_PREFIX
from .config import STALL_ACTIONS
from .evaluate import evaluate_model

STOPPED_EXIT = 3  # more-train's exit status when --on_stall stop ended a stalled run

# ---- the rule -----------------------------------------------------------------------------------
# A healthy run is this share below its start at the check.  Smaller than the search's 5%
# (nas/search: --min-progress, judged at the end of its trials) because the check comes early,
# and above the 1% within which a model that learned only the class frequencies sits around
# the prior (the prior is fit on train rows, the loss read on held-out ones).
LOSS_MARGIN = 0.02
# Accuracy within this of the majority class's is a constant prediction (a point: a few rows
# either way on a dev set of hundreds).  It catches what the loss misses: on MRPC, q,v r2 at 5e-3
# (a rate at which such runs end at the majority class) was 4.8% below its start a third into
# the run, yet at the majority class (68.4); at 2e-3 it was 9.7% below and at 71.3.
ACCURACY_MARGIN = 0.01
# Pearson/Spearman at or below this is no correlation (a stalled regression predicts the mean).
CORRELATION_FLOOR = 0.05
# The check: this share of the run's optimizer steps (the end of the first epoch of a 3-epoch
# run; the on_stall help in config.py says "a third").  Earlier is too early on MRPC: uniform
# LoRA q,v r2 at 2e-3 (MiniLM, batch 16) was still at the labels' prior a fifth into its run (step 138 of 690: 0.628 against 0.624) and took off by a
# quarter (0.595 at step 161); a restart costs at most this share of a run.
CHECK_SHARE = 1 / 3


@dataclass(frozen=True)
class Verdict:
    stalled: bool
    by_loss: bool  # the held-out loss is not LOSS_MARGIN below the start
    by_metric: bool  # the metric is at chance
    metric_name: str | None = None
    metric: float | None = None
    chance: float | None = None


def chance_metric(task_type: str, metrics: dict, majority: float | None) -> tuple[str, float, float, float] | None:
    """(name, value, value at chance, margin) of the metric that shows a constant prediction:
    accuracy against the held-out majority class's share (classification; MCC and F1 of a
    constant prediction follow from it), Pearson or Spearman against zero (regression); None otherwise (causal LM)."""
    if task_type == "classification" and "accuracy" in metrics and majority is not None:
        return "accuracy", float(metrics["accuracy"]), majority, ACCURACY_MARGIN
    if task_type == "regression":
        for name in ("pearson", "spearman"):
            if name in metrics:
                return name, float(metrics[name]), 0.0, CORRELATION_FLOOR
    return None


def judge(loss: float, start: float, task_type: str, metrics: dict, majority: float | None = None) -> Verdict:
    """Stalled when the held-out ``loss`` is not LOSS_MARGIN below ``start``, or the metric is
    at chance (within its margin).  A NaN loss counts as stalled."""
    by_loss = not loss < start * (1 - LOSS_MARGIN)
    cm = chance_metric(task_type, metrics, majority)
    if cm is None:
        return Verdict(by_loss, by_loss, False)
    name, value, chance, margin = cm
    by_metric = not value > chance + margin
    return Verdict(by_loss or by_metric, by_loss, by_metric, name, value, chance)


# ---- the start: the untrained model's loss, and the labels' prior's ---------------------------
def constant_loss(data, split) -> float | None:
    """Held-out loss on ``split`` of the best constant prediction from the training labels (their
    class frequencies, or their mean): what a model that learned only the labels' prior scores.
    None for a causal LM, where no constant prediction is a fair start."""
    if data.task_type == "causal_lm" or "labels" not in data.train.column_names:
        return None
    y, t = column(data.train, "labels"), column(split, "labels")
    if data.task_type == "regression":
        return float(np.mean((t - y.mean()) ** 2))
    p = np.bincount(y, minlength=int(max(y.max(), t.max())) + 1) / len(y)
    return float(-np.mean(np.log(np.clip(p[t], 1e-12, None))))


def majority_rate(data, split) -> float | None:
    """The best accuracy on ``split`` of a constant prediction: its most frequent class's share."""
    if data.task_type != "classification" or len(split) == 0:
        return None
    return float(np.bincount(column(split, "labels")).max() / len(split))


def check_step(total_steps: int) -> int:
    return max(1, round(CHECK_SHARE * total_steps))


def stall_mode(cfg) -> str:
    """``cfg.on_stall``, or by default warn for a run with an output folder (every more-train
    run) and off for an in-memory one (the search's trials: their schedule and cost stay)."""
    return cfg.on_stall or ("warn" if cfg.output_dir else "off")


# ---- the callback -------------------------------------------------------------------------------
class StallCheck(TrainerCallback):
    """The start before the first step, the check evaluation at ``check_step``, then each
    scheduled evaluation until the run is healthy; acts once, at the first stall."""

    def __init__(self, trainer, mode: str, logger, restarts_left: int, next_lr: float):
        self.trainer, self.mode, self.log = trainer, mode, logger
        self.restarts_left, self.next_lr = restarts_left, next_lr
        self.start: dict | None = None  # {"start_loss", "untrained_loss", "prior_loss", "majority", "check_step"}
        self.at: int | None = None  # the check step (None: no check)
        self.stall: dict | None = None
        self.healthy_step: int | None = None
        self.restart = False

    def _evaluate(self) -> dict:
        tr = self.trainer
        model = tr.accelerator.unwrap_model(tr.model)
        return evaluate_model(model, tr.data, tr.args.per_device_eval_batch_size, tr.args.device,
                              tr.autocast_smart_context_manager())

    def on_train_begin(self, args, state, control, **kwargs):
        self.at = check_step(state.max_steps)
        if self.start is not None:  # resumed: the start came with the checkpoint
            return
        if state.global_step > 0:  # resumed from a checkpoint of a run without the check
            self.at = None
            self.log.info("stall check: off for this resumed run (its checkpoint holds no start)")
            return
        data = self.trainer.data
        untrained, prior = self._evaluate()["loss"], constant_loss(data, data.eval)
        self.start = {"start_loss": untrained if prior is None else min(untrained, prior),
                      "untrained_loss": untrained, "prior_loss": prior,
                      "majority": majority_rate(data, data.eval), "check_step": self.at}
        self.log.info("stall check (--on_stall %s): start loss %.4f (untrained %.4f, labels' prior %s); "
                      "check at step %d of %d", self.mode, self.start["start_loss"], untrained,
                      "-" if prior is None else f"{prior:.4f}", self.at, state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        # The check evaluation, unless a scheduled one comes at this step anyway (on_evaluate).
        if self._watching() and state.global_step == self.at and not control.should_evaluate:
            self._judge(state.global_step, self._evaluate(), control, scheduled=False)

    def on_evaluate(self, args, state, control, **kwargs):
        if self._watching() and state.global_step >= self.at:
            self._judge(state.global_step, self.trainer.history[-1], control, scheduled=True)

    def _watching(self) -> bool:
        return self.at is not None and self.healthy_step is None and not self.restart

    def _judge(self, step: int, metrics: dict, control, scheduled: bool) -> None:
        data, start = self.trainer.data, self.start["start_loss"]
        v = judge(metrics["loss"], start, data.task_type, metrics, self.start["majority"])
        if not v.stalled:
            self.healthy_step = step
            if self.stall is not None:
                self.stall["recovered_step"] = step
            self.log.info("step %d: training has left the start (held-out loss %.4f, start %.4f%s)%s", step,
                          metrics["loss"], start, "" if v.metric_name is None else
                          f"; {v.metric_name} {v.metric:.4f}, chance {v.chance:.4f}",
                          "" if self.stall is None else f", after the stall at step {self.stall['step']}")
            return
        if self.stall is not None:
            return  # warned already; watch for a recovery
        action = self.mode if self.mode != "restart" or self.restarts_left > 0 else "continue"
        fix = f"rerun with a lower --learning_rate, e.g. {self.next_lr:g}"
        if action == "restart":
            self.restart, control.should_training_stop, control.should_save = True, True, False
            fix = f"restarting from the initial adapters at --learning_rate {self.next_lr:g}"
        elif action != "continue":
            fix += ", or pass --on_stall restart"
        if action == "stop":  # the check evaluation is no scheduled one: evaluate as the run's last
            control.should_training_stop, control.should_evaluate = True, not scheduled
        why = [f"held-out loss {metrics['loss']:.4f} is not {LOSS_MARGIN:.0%} below the start {start:.4f}"]
        why = why if v.by_loss else []
        if v.metric_name is not None:
            why.append(f"{v.metric_name} {v.metric:.4f} is{'' if v.by_metric else ' not'} at chance ({v.chance:.4f})")
        self.stall = {"step": step, "heldout_loss": metrics["loss"], "start_loss": start,
                      "metric_name": v.metric_name, "metric": v.metric, "chance": v.chance,
                      "by_loss": v.by_loss, "by_metric": v.by_metric, "action": action,
                      "suggestion": fix, "recovered_step": None}
        doing = {"warn": "going on", "stop": "stopping", "restart": "stopping this attempt",
                 "continue": "no restarts left, going on"}[action]
        self.log.warning("step %d: training has stalled (%s); --on_stall %s: %s; %s", step, ", ".join(why),
                         self.mode, doing, fix)

    def state_dict(self) -> dict:
        return {"start": self.start, "stall": self.stall, "healthy_step": self.healthy_step}

    def load_state_dict(self, state: dict) -> None:
        self.start, self.stall, self.healthy_step = state["start"], state["stall"], state["healthy_step"]


# ---- attempts: restarts at a lower rate -------------------------------------------------------
class Attempts:
    """The attempts of one ``train()`` call.  A restart is a fresh run at the lower rate: the
    model is loaded again (or, when the caller passed one, put back as it was before the plan
    was injected) and the seed set again, so it equals ``more-train --learning_rate <lower>``;
    the abandoned attempt's checkpoints are removed so that ``--resume`` never continues them,
    and a resumed run goes on with the attempt its checkpoint belongs to."""

    def __init__(self, cfg, model=None):
        self.cfg, self.mode = cfg, stall_mode(cfg)
        self.done: list[dict] = []  # the abandoned attempts
        self.check: StallCheck | None = None
        self.pristine = _Pristine(model) if model is not None and self.mode == "restart" else None

    def resumed(self, ckpt: Path | None):
        """The config to resume ``ckpt`` with: at the rate of the attempt it belongs to."""
        if ckpt is None or not (ckpt / RESUME_STATE).is_file():
            return self.cfg
        state = torch.load(ckpt / RESUME_STATE, map_location="cpu", weights_only=False)
        done = (state.get("stall") or {}).get("attempts") or []
        if done and done[0]["learning_rate"] == self.cfg.learning_rate:
            self.done = list(done)
            self.cfg = dataclasses.replace(self.cfg, learning_rate=state["config"]["learning_rate"])
        return self.cfg

    def watch(self, trainer, logger) -> None:
        """Add the check to ``trainer`` (nothing when the mode is off)."""
        if self.mode == "off":
            return
        left = self.cfg.stall_restarts - len(self.done)
        self.check = StallCheck(trainer, self.mode, logger, left, self.cfg.learning_rate * self.cfg.stall_lr_factor)
        trainer.add_callback(self.check)
        trainer.resume_state.parts["stall"] = self  # the start, the stall and the attempts go with each checkpoint

    def state_dict(self) -> dict:
        return {**self.check.state_dict(), "attempts": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.check.load_state_dict(state)

    def stalled(self) -> bool:
        """After ``trainer.train()``: whether the attempt stopped to be restarted."""
        return self.check is not None and self.check.restart

    def restart(self, trainer, out: Path | None, model, logger) -> None:
        """The next attempt's config (``self.cfg``), the folder cleared of the abandoned attempt
        and a caller's ``model`` put back as it was."""
        self.done.append({"learning_rate": self.cfg.learning_rate, "steps": trainer.state.global_step,
                          "stall": self.check.stall})
        self.cfg = dataclasses.replace(self.cfg, learning_rate=self.cfg.learning_rate * self.cfg.stall_lr_factor,
                                       resume=False, overwrite_output_dir=False)
        if out is None:
            shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # the attempt's scratch folder
        elif trainer.args.should_save:  # DDP: the main process
            for p in [*out.glob("checkpoint-*"), *out.glob(f"{TMP_PREFIX}checkpoint-*"), out / "metrics.jsonl"]:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        logger.info("attempt %d: learning rate %g (attempt %d stalled at step %d)", len(self.done) + 1,
                    self.cfg.learning_rate, len(self.done), self.check.stall["step"])
        if self.pristine is not None:
            self.pristine.restore(model)

    def report(self) -> tuple[dict | None, dict | None]:
        """(``stall``: the final attempt's, None when healthy or off; ``stall_check``: the start,
        the check step, every attempt)."""
        if self.check is None or self.check.start is None:
            return None, None
        start = {k: v for k, v in self.check.start.items() if k != "majority"}
        final = {"learning_rate": self.cfg.learning_rate, "steps": self.check.trainer.state.global_step,
                 "stall": self.check.stall}
        return self.check.stall, {"mode": self.mode, **start, "healthy_step": self.check.healthy_step,
                                  "attempts": self.done + [final]}


class _Pristine:
    """A caller's base model as it was before the plan was injected, to put back in place."""

    def __init__(self, model):
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.grad = {n: p.requires_grad for n, p in model.named_parameters()}

    def restore(self, model) -> None:
        remove_plan(model)
        model.load_state_dict(self.state)
        for n, p in model.named_parameters():
            p.requires_grad_(self.grad[n])


__all__ = ["ACCURACY_MARGIN", "Attempts", "CHECK_SHARE", "CORRELATION_FLOOR", "LOSS_MARGIN", "STALL_ACTIONS",
           "STOPPED_EXIT", "StallCheck", "Verdict", "chance_metric", "constant_loss", "judge", "majority_rate",
           "stall_mode"]
