"""Trial maths: how a trial's parameters re-weight the proxy scores, a plan's identity, and how
trials rank."""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import optuna

from search_spaces import Candidate

from search_spaces.space import kind_of
from ..plan import Plan


# ---- trial parameterisation --------------------------------------------------------------
def reweight(candidates: list[Candidate], scores: dict[str, float], params: dict[str, float],
             num_layers: int, seed: int) -> dict[str, float]:
    """Proxy scores re-weighted by one trial's parameters (the proxy stays the prior)."""
    rng = np.random.default_rng(seed)
    jitter = params.get("jitter", 0.0)
    noise = rng.normal(0.0, 1.0, size=len(candidates)) * jitter
    depth = params.get("depth_bias", 0.0)
    out = {}
    for c, eps in zip(candidates, noise):
        rel = (c.layer / max(num_layers - 1, 1)) * 2 - 1  # -1 first layer .. +1 last
        log_w = params.get(f"w_kind_{kind_of(c)}", 0.0) + depth * rel + eps
        if not c.is_shortcut:
            log_w += params.get(f"w_role_{c.role}", 0.0)
        out[c.key] = scores[c.key] * math.exp(log_w)
    return out


def plan_hash(plan: Plan) -> str:
    key = json.dumps({"m": plan.modules, "s": plan.shortcuts, "lr": plan.training.get("lr")},
                     sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def trial_rank(trial: optuna.trial.FrozenTrial) -> tuple[float, float]:
    """Higher is better: the lower held-out loss (the objective), ties broken by the higher
    held-out main metric.  Early held-out accuracy ranks close plans poorly; loss ranks them well."""
    metrics = trial.user_attrs.get("metrics", {})
    main = trial.user_attrs.get("main_metric")
    score = metrics.get(main, -math.inf) if main else -math.inf
    return -trial.value, score if math.isfinite(score) else -math.inf
