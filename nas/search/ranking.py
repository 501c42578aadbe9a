"""Ranking by held-out loss: per-row losses of a model on held-out rows, and the noise test that
decides whether a difference between two plans is real before anything is cut.

Early held-out accuracy ranks close configurations poorly; held-out loss ranks them well (PEFT's
method-comparison runs; Ru et al., "Speedy Performance Estimation for NAS", 2021).  Every
candidate is scored on the same rows, so two candidates are compared by a paired test on their
per-row loss differences: a cut needs mean(l_a - l_b) > z * std(l_a - l_b) / sqrt(n).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.taskdata import row_lengths


@dataclass
class HeldOut:
    """One model's score on held-out rows: mean loss, its standard error, the main metric."""

    loss: float
    se: float
    metrics: dict[str, float] = field(default_factory=dict)
    rows: list[float] = field(default_factory=list)  # per-row losses, shortest rows first


def _batches(split, collate, batch_size: int):
    """Batches of rows sorted by length (little padding); the order is a fixed function of the
    rows, so every model is scored row by row in the same order."""
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels")
            if c in split.column_names]
    lengths = row_lengths(split) if "input_ids" in cols else [0] * len(split)
    order = sorted(range(len(split)), key=lambda i: (lengths[i], i))
    for start in range(0, len(order), batch_size):
        part = split[order[start:start + batch_size]]
        yield collate([{c: part[c][i] for c in cols} for i in range(len(part[cols[0]]))])


@torch.no_grad()
def heldout(model: nn.Module, data, split=None, batch_size: int = 32) -> HeldOut:
    """Per-row losses (cross-entropy, squared error for regression, mean token loss for a
    causal LM) of ``model`` on ``split`` (default ``data.eval``), their mean and standard error,
    and the task's metrics."""
    split = data.eval if split is None else split
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses, preds, labels = [], [], []
    try:
        for batch in _batches(split, data.collator(), batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            y = batch.pop("labels")
            logits = model(**batch).logits.float()
            if data.task_type == "causal_lm":
                lg, tgt = logits[:, :-1], y[:, 1:]
                tok = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1),
                                      ignore_index=-100, reduction="none").view(tgt.shape)
                mask = (tgt != -100).float()
                losses.append((tok * mask).sum(1) / mask.sum(1).clamp(min=1))
                continue
            if data.task_type == "regression":
                out = logits.reshape(-1)
                losses.append((out - y.float()) ** 2)
                preds.append(out.cpu().numpy())
            else:
                losses.append(F.cross_entropy(logits, y, reduction="none"))
                preds.append(logits.argmax(-1).cpu().numpy())
            labels.append(y.cpu().numpy())
    finally:
        model.train(was_training)
    rows = torch.cat(losses).double()
    n = len(rows)
    se = float(rows.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.inf
    metrics = {} if not preds else data.compute_metrics(np.concatenate(preds), np.concatenate(labels))
    return HeldOut(loss=float(rows.mean()), se=se, metrics={k: float(v) for k, v in metrics.items()},
                   rows=rows.tolist())


def worse_beyond_noise(rows: list[float], best_rows: list[float], z: float) -> bool:
    """True when ``rows`` (per-row losses) are worse than ``best_rows`` on the same rows by more
    than ``z`` standard errors of the mean paired difference."""
    a, b = np.asarray(rows, dtype=float), np.asarray(best_rows, dtype=float)
    if a.shape != b.shape or len(a) < 2:
        return False  # not comparable row by row: never cut on it
    d = a - b
    sd = d.std(ddof=1)
    if sd == 0:
        return d.mean() > 0
    return d.mean() > z * sd / math.sqrt(len(d))


def gap_beyond_noise(value: float, best: float, se: float, z: float) -> bool:
    """Unpaired form, for scores without per-row losses: the gap exceeds ``z`` standard errors
    of a difference of two means with standard error ``se`` each."""
    return math.isfinite(se) and value - best > z * math.sqrt(2.0) * se


def progress(start_loss: float, loss: float) -> float:
    """How far training has lowered the held-out loss, as a share of the start."""
    return (start_loss - loss) / start_loss if start_loss > 0 else float("nan")
