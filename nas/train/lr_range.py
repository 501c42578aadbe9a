"""The learning-rate range test (Smith, "Cyclical Learning Rates", arXiv 1506.01186; fastai and
Lightning ``lr_find``): one short run whose rate grows exponentially from ``lo`` to ``hi``, the
loss smoothed, stopped when it diverges.  Its suggestion is a starting point to confirm with short
real trials, not a result.

    rt = lr_range_test(plan, TrainConfig.from_plan(plan), model=base, data=data)
    rt.suggestion, rt.diverged_at; plot_range_test(rt, "lr_range.png")
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import NonFiniteLoss, TrainConfig
from .trainer import prepare

# EMA of the per-step losses.  0.98 (fastai, Lightning) lags ~50 steps, half a 100-step test: on a
# quadratic its steepest point fell 3-4x below the best rate; 0.9 lands within 2x of it.
BETA = 0.9
STOP_FACTOR = 4.0  # Lightning stops when the smoothed loss exceeds 4x its best
MIN_FALL = 0.01  # a curve whose minimum is not 1% below its start did not fall


@dataclass
class RangeTest:
    """One range test: the rates tried, raw and smoothed losses, the suggestion and its rule."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None  # None: the loss never fell
    method: str = ""
    diverged_at: float | None = None  # the first rate at which it diverged (None: it did not)
    lo: float = 0.0
    hi: float = 0.0

    @property
    def lr_at_min(self) -> float | None:
        """The rate where the smoothed loss was lowest: past it the loss rose (or the sweep ended)."""
        return float(self.lrs[int(np.argmin(self.smoothed))]) if self.lrs else None

    def summary(self, points: int = 30) -> dict:
        """The curve subsampled to about ``points`` points, with the suggestion: for a plan file."""
        idx = sorted(set(np.linspace(0, len(self.lrs) - 1, min(points, len(self.lrs))).round().astype(int)))
        return {"lo": self.lo, "hi": self.hi, "steps": len(self.lrs),
                "lrs": [float(f"{self.lrs[i]:.4g}") for i in idx],
                "smoothed": [float(f"{self.smoothed[i]:.5g}") for i in idx],
                "suggestion": self.suggestion, "method": self.method, "lr_at_min": self.lr_at_min,
                "diverged_at": self.diverged_at}


def sweep(step: Callable[[float], float], lo: float = 1e-5, hi: float = 1e-1, steps: int = 100,
          beta: float = BETA, stop_factor: float = STOP_FACTOR) -> RangeTest:
    """Call ``step(lr)`` (one optimizer step at ``lr``, returning its loss) at ``steps`` rates
    growing geometrically from ``lo`` to ``hi``; stop at a non-finite loss (or NonFiniteLoss) or
    when the bias-corrected EMA of the losses exceeds ``stop_factor`` times its minimum."""
    if not 0 < lo < hi or steps < 2:
        raise ValueError(f"a range test needs 0 < lo < hi and 2 or more steps, got {lo}, {hi}, {steps}")
    rt, avg, best = RangeTest(lo=lo, hi=hi), 0.0, math.inf
    ratio = (hi / lo) ** (1 / (steps - 1))
    for i in range(steps):
        lr = lo * ratio ** i
        try:
            loss = float(step(lr))
        except NonFiniteLoss:
            loss = math.nan
        if not math.isfinite(loss):
            rt.diverged_at = lr
            break
        avg = beta * avg + (1 - beta) * loss
        smooth = avg / (1 - beta ** (i + 1))
        if smooth > stop_factor * best:
            rt.diverged_at = lr
            break
        best = min(best, smooth)
        rt.lrs.append(lr)
        rt.losses.append(loss)
        rt.smoothed.append(smooth)
    rt.suggestion, rt.method = suggest(rt.lrs, rt.smoothed)
    return rt


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, str]:
    """The rate where the smoothed loss falls fastest against log lr ("steepest", in log loss so
    that the slope does not shrink as the loss does), looked for up to the minimum of the curve,
    hence always below where it diverged.  None when it never fell."""
    if len(lrs) < 3:
        return None, "too few steps"
    g = np.gradient(np.log(smoothed), np.log(lrs))
    end = int(np.argmin(smoothed))
    if smoothed[end] > (1 - MIN_FALL) * smoothed[0] or g[:end + 1].min() >= 0:
        return None, "flat: the loss did not fall"
    return float(lrs[int(np.argmin(g[:end + 1]))]), "steepest descent of the smoothed log loss"


def lr_range_test(plan, cfg: TrainConfig, *, model, tokenizer=None, data=None, lo: float = 1e-5,
                  hi: float = 1e-1, steps: int = 100, beta: float = BETA,
                  stop_factor: float = STOP_FACTOR) -> RangeTest:
    """A range test of ``plan`` on a deep copy of ``model`` (a base model without adapters): the
    plan is injected from a fresh init at ``cfg.seed`` exactly as ``train`` would, and trained
    with the run's own batches, optimizer (AdamW, its weight decay), clipping and precision;
    ``model`` is left untouched.  ``cfg``'s schedule is replaced by the sweep (no warm-up); one
    micro-batch per step."""
    cfg = dataclasses.replace(cfg, max_steps=steps, output_dir=None, progress=False, resume=False)
    trainer = prepare(plan, cfg, model=copy.deepcopy(model), tokenizer=tokenizer, data=data)
    try:
        net, opt = trainer.model, trainer.create_optimizer()
        batches = itertools.chain.from_iterable(itertools.repeat(trainer.get_train_dataloader()))
        params = [p for g in opt.param_groups for p in g["params"]]
        scaler = torch.amp.GradScaler(enabled=cfg.fp16)

        def step(lr: float) -> float:
            for g in opt.param_groups:
                g["lr"] = lr
            net.train()
            inputs = trainer._prepare_inputs(next(batches))
            with trainer.autocast_smart_context_manager():
                loss = trainer.compute_loss(net, inputs)
            if not torch.isfinite(loss):
                return math.nan
            scaler.scale(loss).backward()
            if cfg.max_grad_norm:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        return sweep(step, lo, hi, steps, beta, stop_factor)
    finally:
        if getattr(trainer, "scratch_dir", None):
            shutil.rmtree(trainer.scratch_dir, ignore_errors=True)


def plot_range_test(rt: RangeTest, path: str | Path, title: str = "learning-rate range test") -> Path:
    """Loss against lr (log scale): raw and smoothed, the suggestion and where it diverged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rt.lrs, rt.losses, c="tab:gray", alpha=0.4, lw=1, label="loss per step")
    ax.plot(rt.lrs, rt.smoothed, c="tab:blue", label="smoothed")
    if rt.suggestion is not None:
        ax.axvline(rt.suggestion, c="tab:green", ls="--", label=f"suggestion {rt.suggestion:.2g}")
    if rt.diverged_at is not None:
        ax.axvline(rt.diverged_at, c="tab:red", ls=":", label=f"diverged at {rt.diverged_at:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return Path(path)


def range_test_from(d: dict) -> RangeTest:
    return RangeTest(**{k: d[k] for k in (f.name for f in dataclasses.fields(RangeTest)) if k in d})


__all__ = ["RangeTest", "lr_range_test", "plot_range_test", "range_test_from", "suggest", "sweep"]
