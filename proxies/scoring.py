"""The entry points: ``score_candidates`` (every candidate, jointly; or one at a time to check)
and ``score_many`` (several proxies sharing one gradient collection)."""
from __future__ import annotations

import math
import statistics
import time

from torch import nn

from search_spaces.anatomy import ModelLayout, discover

from .base import DEFAULT_PROXY, get_proxy
from .check import one_at_a_time_signal
from .signals import LossFn, collect_gradients, joint_signals


def score_candidates(model: nn.Module, layout: ModelLayout | None, candidates: list,
                     batches: list[dict], proxy: str = DEFAULT_PROXY, *,
                     loss_fn: LossFn | None = None, seed: int = 0,
                     joint: bool = True) -> dict[str, float]:
    """Score every candidate (adapters of every kind and shortcuts): {candidate.key: score}.

    ``batches``: dicts that ``model(**batch)`` accepts, with ``labels`` so ``.loss`` exists,
    or any dicts together with ``loss_fn(model, batch) -> scalar``.  One forward/backward
    per batch scores all candidates at once (``joint=False``: one candidate at a time with
    the real adapter attached, for verification; much slower).  ``seed`` fixes the scoring
    init of the proxies that need one.  The model is left exactly as it was.
    """
    p = get_proxy(proxy if proxy is not None else DEFAULT_PROXY)
    if not batches:
        raise ValueError("score_candidates needs at least one batch")
    candidates = list(candidates)
    if not candidates:
        return {}
    layout = layout or discover(model)
    bad = [c.target for c in candidates if not c.is_shortcut and layout.module(c.target) is None]
    if bad:
        raise ValueError(f"candidates name modules this model does not have, e.g. {bad[:3]}")
    scores: dict[str, float] = {}
    if joint:
        mods = [c.target for c in candidates if not c.is_shortcut]
        shorts = [c.target for c in candidates if c.is_shortcut]
        G, per_batch = collect_gradients(model, layout, mods, shorts, batches, loss_fn=loss_fn,
                                         signal=p.signal, keep_batches="channel_dots" in p.needs)
        for sig in joint_signals(candidates, layout, G, per_batch, p, seed=seed):
            scores[sig.candidate.key] = float(p.score(sig))
    else:
        for c in candidates:
            sig = one_at_a_time_signal(model, layout, c, batches, p, loss_fn=loss_fn, seed=seed)
            scores[c.key] = float(p.score(sig))
    bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"proxy {p.name!r} gave non-finite scores, e.g. {list(bad.items())[:3]}")
    return scores


def score_many(model: nn.Module, layout: ModelLayout | None, candidates: list, batches: list[dict],
               names: list[str], *, loss_fn: LossFn | None = None,
               seed: int = 0) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Several proxies at once, sharing the gradient collection of proxies with the same
    signal.  Returns ({proxy: {key: score}}, {proxy: seconds}) where a proxy's seconds are
    what ``score_candidates`` alone would take: its signal's collection + its own scoring."""
    layout = layout or discover(model)
    candidates = list(candidates)
    ps = [get_proxy(n) for n in names]
    mods = [c.target for c in candidates if not c.is_shortcut]
    shorts = [c.target for c in candidates if c.is_shortcut]
    out, secs = {}, {}
    for signal in dict.fromkeys(p.signal for p in ps):
        group = [p for p in ps if p.signal == signal]
        t = time.perf_counter()
        G, per_batch = collect_gradients(model, layout, mods, shorts, batches, loss_fn=loss_fn, signal=signal,
                                         keep_batches=any("channel_dots" in p.needs for p in group))
        collect_s = time.perf_counter() - t
        for p in group:
            t = time.perf_counter()
            out[p.name] = {sig.candidate.key: float(p.score(sig))
                           for sig in joint_signals(candidates, layout, G, per_batch, p, seed=seed)}
            secs[p.name] = collect_s + time.perf_counter() - t
    return out, secs


def score_summary(scores: dict[str, float]) -> dict:
    vals = list(scores.values())
    if not vals:
        return {"candidates": 0}
    return {"candidates": len(vals), "min": min(vals), "max": max(vals),
            "mean": statistics.fmean(vals), "median": statistics.median(vals),
            "distinct": len(set(vals))}
