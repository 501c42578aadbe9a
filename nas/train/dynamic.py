"""Dynamic allocation (HeteroLoRA, REFERENCE.md §2).

The plan's modules and shortcuts are the candidate pool and are all built.  Every k optimizer
steps (``TrainConfig.dynamic_every`` of an epoch, 1/5 by default) every candidate is re-scored
with the current weights on a few training batches, and the top set that fits the budget is
enabled; the rest is disabled (``Adapter.enabled = False`` / ``Shortcut.enabled = False``) and
keeps its weights and its optimizer state.

The budget is ``plan.budget["params"]`` when the plan has one, else the parameter count of the
candidates the plan enables at the start.  Candidates are ranked together ("combined") by score
and taken greedily while they fit.

Scoring is swappable: ``score_fn(model, batches, pool) -> {name: score}``.  By default it is
``proxies.score_candidates`` with ``proxies.DEFAULT_PROXY`` (any proxy of that package can be
named); without the proxies package, or with ``proxy="live-grad-norm"``, it is HeteroLoRA's
grad-norm on each candidate's own, current parameters: ``sum over its tensors of
||dL/dθ||_F`` with the gradients of a few batches summed (every candidate switched on while
scoring).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..discovery import ModelLayout
from ..inject import adapters, shortcut_set
from ..shortcuts import parse_shortcut_key

log = logging.getLogger(__name__)

ScoreFn = Callable[[nn.Module, list, dict], dict]


@dataclass
class PoolEntry:
    """One candidate of the pool: an adapter on a module, or a shortcut."""

    name: str  # plan key: qualified module name, or "<layer>.<kind>"
    layer: int
    role: str  # module role ("q", "v", ...) or shortcut kind ("s_res1", ...)
    params: int
    module: nn.Module
    is_shortcut: bool

    @property
    def enabled(self) -> bool:
        return bool(self.module.enabled)

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.module.enabled = bool(value)

    def parameters(self) -> list[nn.Parameter]:
        if self.is_shortcut:
            return list(self.module.parameters())
        return self.module.trainable_parameters()


def candidate_pool(model: nn.Module, layout: ModelLayout) -> dict[str, PoolEntry]:
    """Every adapter and shortcut attached to ``model`` (by apply_plan), in a stable order."""
    pool = {}
    for name, ad in adapters(model).items():
        mod = layout.module(name)
        layer, role = (mod.layer, mod.role) if mod else (-1, name.rsplit(".", 1)[-1])
        pool[name] = PoolEntry(name, layer, role, sum(p.numel() for p in ad.trainable_parameters()),
                               ad, False)
    sset = shortcut_set(model)
    if sset is not None:
        for key, sc in sset.items():
            layer, kind = parse_shortcut_key(key)
            pool[key] = PoolEntry(key, layer, kind, sum(p.numel() for p in sc.parameters()), sc, True)
    return pool


# ---- scoring --------------------------------------------------------------------------------
def grad_norm_scores(model: nn.Module, batches: list[dict], pool: dict[str, PoolEntry]) -> dict[str, float]:
    """grad-norm proxy: ``sum_t ||dL/dθ_t||_F`` over each candidate's own tensors.

    Every candidate is switched on while scoring (a disabled one would get no gradient) and the
    model is in eval mode (no dropout: the score does not consume the training RNG); the
    previous on/off state and mode are restored.  Gradients go through ``torch.autograd.grad``,
    so no ``.grad`` of the training run is touched.
    """
    names = list(pool)
    params = [p for n in names for p in pool[n].parameters()]
    owners = [n for n in names for _ in pool[n].parameters()]
    was_training = model.training
    saved = {n: e.enabled for n, e in pool.items()}
    grads = [torch.zeros_like(p) for p in params]
    try:
        model.eval()
        for e in pool.values():
            e.enabled = True
        with torch.enable_grad():
            for batch in batches:
                loss = model(**batch).loss
                gs = torch.autograd.grad(loss, params, allow_unused=True)
                for acc, g in zip(grads, gs):
                    if g is not None:
                        acc.add_(g.detach())
    finally:
        for n, e in pool.items():
            e.enabled = saved[n]
        model.train(was_training)
    scores = {n: 0.0 for n in names}
    for n, g in zip(owners, grads):
        scores[n] += float(g.float().norm())
    return scores


LIVE_GRAD_NORM = "live-grad-norm"


def pool_candidates(pool: dict[str, PoolEntry], plan=None) -> dict[str, Any]:
    """search_spaces.Candidate objects for the pool (what ``proxies.score_candidates`` takes)."""
    from search_spaces.space import Candidate, freeze_choice

    out = {}
    for name, e in pool.items():
        if e.is_shortcut:
            hp = (plan.shortcuts.get(name) if plan is not None else None) or dict(e.module.hparams)
            choice = {"type": "shortcut", **{k: v for k, v in hp.items() if k != "enabled"}}
        else:
            choice = (plan.modules.get(name) if plan is not None else None) or \
                {"type": e.module.kind, **e.module.hparams}
            choice = {k: v for k, v in choice.items() if k != "enabled"}
        out[name] = Candidate(name, e.layer, e.role, freeze_choice(choice), e.params)
    return out


def proxy_score_fn(proxy: str | None = None, plan=None, layout: ModelLayout | None = None,
                   seed: int = 0) -> tuple[ScoreFn, str]:
    """A score function backed by ``proxies.score_candidates`` (``proxy`` None: its default).

    The proxies score each candidate at the model's current weights (the gradient of the
    module's base weight, with the currently enabled adapters in the model), at the proxy's
    scoring init for the candidate itself.  Raises ImportError when the package lacks them.
    """
    import proxies

    score_candidates = proxies.score_candidates
    name = proxy or proxies.DEFAULT_PROXY
    proxies.get_proxy(name)  # ValueError listing the valid names

    def score(model, batches, pool):
        cands = pool_candidates(pool, plan)
        was = {n: e.enabled for n, e in pool.items()}
        try:
            scores = score_candidates(model, layout, list(cands.values()), batches, name, seed=seed)
        finally:
            for n, e in pool.items():
                e.enabled = was[n]
        return {n: float(scores[c.key]) for n, c in cands.items()}

    score.__name__ = f"proxies:{name}"
    return score, f"proxies:{name}"


def default_score_fn(proxy: str | None = None, plan=None, layout: ModelLayout | None = None,
                     seed: int = 0) -> tuple[ScoreFn, str]:
    """(score function, its name).

    ``proxy`` None: the proxies package's ``DEFAULT_PROXY`` through ``proxies.score_candidates``
    when that package provides them, else the live grad-norm below.  ``"live-grad-norm"``:
    always the live grad-norm (each candidate's own, current parameters).  Any other name: that
    proxy of the proxies package.
    """
    if proxy == LIVE_GRAD_NORM:
        return grad_norm_scores, LIVE_GRAD_NORM
    try:
        return proxy_score_fn(proxy, plan, layout, seed)
    except (ImportError, AttributeError):
        if proxy is not None:
            raise ValueError(f"proxy {proxy!r} needs the proxies package "
                             f"(only {LIVE_GRAD_NORM!r} is built in)") from None
        return grad_norm_scores, LIVE_GRAD_NORM


def select_within_budget(scores: dict[str, float], sizes: dict[str, int], budget: int) -> list[str]:
    """Greedy: highest score first, each taken if it still fits (ties broken by name)."""
    chosen, used = [], 0
    for name in sorted(scores, key=lambda n: (-_finite(scores[n]), n)):
        if used + sizes[name] <= budget:
            chosen.append(name)
            used += sizes[name]
    return chosen


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


# ---- the allocator --------------------------------------------------------------------------
class DynamicAllocator:
    """Keeps the pool, the budget and how often each candidate was on."""

    def __init__(self, model: nn.Module, layout: ModelLayout, budget: int | None = None,
                 score_fn: ScoreFn | None = None, score_name: str | None = None, *,
                 proxy: str | None = None, plan=None, seed: int = 0):
        self.model, self.layout = model, layout
        self.pool = candidate_pool(model, layout)
        if not self.pool:
            raise ValueError("dynamic allocation needs a plan with modules or shortcuts")
        if score_fn is None:
            score_fn, score_name = default_score_fn(proxy, plan, layout, seed)
        self.score_fn, self.score_name = score_fn, score_name or getattr(score_fn, "__name__", "custom")
        initial = sum(e.params for e in self.pool.values() if e.enabled)
        self.budget = int(budget) if budget else initial
        self.counts = {n: 0 for n in self.pool}  # optimizer steps each candidate was on
        self.steps = 0
        self.rounds: list[dict[str, Any]] = []

    @property
    def sizes(self) -> dict[str, int]:
        return {n: e.params for n, e in self.pool.items()}

    def enabled_names(self) -> list[str]:
        return [n for n, e in self.pool.items() if e.enabled]

    def set_enabled(self, names: Iterable[str]) -> None:
        names = set(names)
        for n, e in self.pool.items():
            e.enabled = n in names

    def tick(self) -> None:
        """Record one optimizer step with the current on/off state."""
        self.steps += 1
        for n, e in self.pool.items():
            if e.enabled:
                self.counts[n] += 1

    def reallocate(self, batches: list[dict], step: int) -> dict[str, Any]:
        scores = self.score_fn(self.model, batches, self.pool)
        chosen = select_within_budget(scores, self.sizes, self.budget)
        before = set(self.enabled_names())
        self.set_enabled(chosen)
        after = set(chosen)
        info = {"step": step, "enabled": len(after), "params": sum(self.sizes[n] for n in after),
                "on": sorted(after - before), "off": sorted(before - after)}
        self.rounds.append(info)
        return {**info, "scores": scores}

    def state_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled_names(), "counts": dict(self.counts), "steps": self.steps,
                "rounds": list(self.rounds), "budget": self.budget}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state["enabled"]) - set(self.pool)
        if unknown:
            raise ValueError(f"checkpoint names candidates this model does not have: {sorted(unknown)[:3]}")
        self.set_enabled(state["enabled"])
        self.counts = {n: int(state["counts"].get(n, 0)) for n in self.pool}
        self.steps, self.rounds, self.budget = int(state["steps"]), list(state["rounds"]), int(state["budget"])

    # ---- reporting ------------------------------------------------------------------------
    def counts_report(self) -> dict[str, Any]:
        total = max(self.steps, 1)
        return {
            "steps": self.steps, "budget": self.budget, "score": self.score_name,
            "reallocations": len(self.rounds),
            "counts": dict(self.counts),
            "fraction": {n: c / total for n, c in self.counts.items()},
            "candidates": {n: {"layer": e.layer, "role": e.role, "params": e.params,
                               "shortcut": e.is_shortcut} for n, e in self.pool.items()},
            "rounds": self.rounds,
        }

    def save_report(self, out_dir: str | Path) -> tuple[Path, Path]:
        from ..plan import atomic_write_text

        out_dir = Path(out_dir)
        report = self.counts_report()
        j = atomic_write_text(out_dir / "enable_counts.json", json.dumps(report, indent=2) + "\n")
        png = save_heatmap(report, self.layout, out_dir / "enable_heatmap.png")
        return j, png


def heatmap_matrix(report: dict[str, Any], layout: ModelLayout):
    """(roles, layers, matrix[layer][role]) of on-fractions; None where there is no candidate."""
    cands = report["candidates"]
    module_roles = [r for r in layout.roles if any(c["role"] == r and not c["shortcut"] for c in cands.values())]
    sc_roles = [k for k in ("s_res1", "s_res2", "s_in", "s_cut")
                if any(c["role"] == k and c["shortcut"] for c in cands.values())]
    roles = module_roles + sc_roles
    layers = list(range(layout.num_layers))
    matrix = [[None] * len(roles) for _ in layers]
    for name, c in cands.items():
        if c["role"] in roles and 0 <= c["layer"] < len(layers):
            matrix[c["layer"]][roles.index(c["role"])] = report["fraction"][name]
    return roles, layers, matrix


def save_heatmap(report: dict[str, Any], layout: ModelLayout, path: str | Path) -> Path:
    """Layers x module roles (and shortcut kinds), colour = fraction of steps the module was on
    (as HeteroLoRA's Figure 4).  Written atomically as PNG with matplotlib's Agg backend."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from ..plan import atomic_write_bytes

    roles, layers, matrix = heatmap_matrix(report, layout)
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * max(len(roles), 1), 1.0 + 0.4 * max(len(layers), 1)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(roles)), roles, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [str(i) for i in layers])
    ax.set_xlabel("module role / shortcut")
    ax.set_ylabel("layer")
    ax.set_title(f"fraction of steps enabled ({report['steps']} steps, "
                 f"{report['reallocations']} reallocations)", fontsize=9)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
