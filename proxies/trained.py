"""Candidate importance on trained weights: AdaLoRA's smoothed sensitivity on the super-network.

AdaLoRA (Zhang et al., 2023) scores a parameter by its sensitivity I = |θ · ∂L/∂θ|, smoothed
with an exponential moving average Ī ← β1 Ī + (1 − β1) I and weighted by its uncertainty
Ū ← β2 Ū + (1 − β2) |I − Ī|; the score is Ī · Ū, measured after a warm-up.  Here it is
accumulated while the super-network trains: after each backward, ``Sensitivity.update``
updates only the tensors the step's sub-plan used (for a nested rank, its slice), so a
parameter's averages move only when it was trained.  A candidate's importance is the sum
over the tensors it uses (rank r: the first r rows/columns of the slot), then normalised
within its kind (``normalise_within_kind``): sums over different kinds have different scales
(θ and gradient sizes differ per structure), and raw sums would favour whichever kind is
large by construction, not by use.  ``trained_importance`` returns {candidate.key: score},
what ``allocate`` consumes.
"""
from __future__ import annotations

import math
import statistics
from typing import Iterable

import torch
from torch import nn

from search_spaces.supernet import elastic_modules, shortcut_modules

NORMALISATIONS = ("median", "rank", "none")


class Sensitivity:
    """Smoothed |θ·∇θ| (and its uncertainty) of every super-network tensor, per element."""

    def __init__(self, model: nn.Module, *, beta1: float = 0.85, beta2: float = 0.85,
                 warmup_steps: int = 0, uncertainty: bool = True):
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {b}")
        self.model, self.beta1, self.beta2 = model, beta1, beta2
        self.warmup_steps, self.uncertainty = warmup_steps, uncertainty
        self.steps = 0  # update() calls, warm-up included
        self.ema: dict[int, torch.Tensor] = {}
        self.unc: dict[int, torch.Tensor] = {}
        self.updates: dict[str, int] = {}  # module name / shortcut key -> steps it was trained

    def _state(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if id(p) not in self.ema:
            self.ema[id(p)] = torch.zeros_like(p, dtype=torch.float32)
            self.unc[id(p)] = torch.zeros_like(p, dtype=torch.float32)
        return self.ema[id(p)], self.unc[id(p)]

    def _active_tensors(self) -> Iterable[tuple[str, torch.Tensor, tuple[int, int] | None]]:
        for name, em in elastic_modules(self.model).items():
            m = em.active
            if m is not None:
                for pname, size in m.sizes.items():
                    yield name, em.slots[m.slot][pname], size
        for key, sc in shortcut_modules(self.model).items():
            if sc.enabled:
                for p in sc.parameters():
                    yield key, p, None

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        """Call after backward, before the optimizer step, with the step's sub-plan active."""
        self.steps += 1
        if self.steps <= self.warmup_steps:
            return
        b1, b2 = self.beta1, self.beta2
        owners = set()
        for owner, p, size in self._active_tensors():
            if p.grad is None:
                continue
            ema, unc = self._state(p)
            theta, grad = p.detach(), p.grad
            if size is not None:
                theta, grad, ema, unc = (t.narrow(size[0], 0, size[1])
                                         for t in (theta, grad, ema, unc))
            sens = (theta * grad).abs().float()
            ema.mul_(b1).add_(sens, alpha=1 - b1)
            unc.mul_(b2).add_((sens - ema).abs(), alpha=1 - b2)
            owners.add(owner)
        for owner in owners:
            self.updates[owner] = self.updates.get(owner, 0) + 1

    def score_tensor(self, p: torch.Tensor, size: tuple[int, int] | None) -> float:
        if id(p) not in self.ema:
            return 0.0
        s = self.ema[id(p)] * self.unc[id(p)] if self.uncertainty else self.ema[id(p)]
        return float((s if size is None else s.narrow(size[0], 0, size[1])).sum())

    def raw_scores(self, candidates) -> dict[str, float]:
        """{candidate.key: summed score of the tensors it uses} (0 if never trained)."""
        ems, scs = elastic_modules(self.model), shortcut_modules(self.model)
        out = {}
        for c in candidates:
            if c.is_shortcut:
                out[c.key] = sum(self.score_tensor(p, None) for p in scs[c.target].parameters()) \
                    if c.target in scs else 0.0
                continue
            em = ems[c.target]
            m = em.member(c.choice_dict)
            out[c.key] = sum(self.score_tensor(em.slots[m.slot][n], size)
                             for n, size in m.sizes.items())
        return out


def normalise_within_kind(scores: dict[str, float], kinds: dict[str, str],
                          how: str = "median") -> dict[str, float]:
    """Put every kind's scores on one scale.

    "median": divide by the kind's median positive score (a kind's typical candidate scores 1);
    "rank": the within-kind rank in (0, 1] (ties share their mean rank); "none": unchanged.
    """
    if how not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {how!r}; valid: {list(NORMALISATIONS)}")
    if how == "none":
        return dict(scores)
    by_kind: dict[str, list[str]] = {}
    for key in scores:
        by_kind.setdefault(kinds[key], []).append(key)
    out = {}
    for keys in by_kind.values():
        vals = [scores[k] for k in keys]
        if how == "median":
            pos = [v for v in vals if v > 0]
            med = statistics.median(pos) if pos else 1.0
            out.update({k: scores[k] / med for k in keys})
        else:
            order = sorted(vals)
            first, last = {}, {}
            for i, v in enumerate(order, start=1):
                first.setdefault(v, i)
                last[v] = i
            out.update({k: (first[scores[k]] + last[scores[k]]) / 2 / len(order) for k in keys})
    assert all(math.isfinite(v) for v in out.values())
    return out


def trained_importance(sensitivity: Sensitivity, candidates, normalise: str = "median"
                       ) -> dict[str, float]:
    """{candidate.key: importance on the trained super-network, normalised within its kind}."""
    candidates = list(candidates)
    return normalise_within_kind(sensitivity.raw_scores(candidates),
                                 {c.key: c.kind for c in candidates}, normalise)
