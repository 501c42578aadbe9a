"""Trial maths: a trial's parameters (what Optuna samples, the proxy plan's point among them)
and how they re-weight the proxy scores, a plan's identity, and how trials rank."""
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
def suggest_weights(trial: optuna.Trial, candidates: list[Candidate]) -> dict[str, float]:
    """What reweight reads: a weight per adapter kind and per module role, a depth bias and a
    per-candidate jitter (the plans scored on the shared weights sample only these)."""
    params = {}
    for k in sorted({kind_of(c) for c in candidates}):
        params[f"w_kind_{k}"] = trial.suggest_float(f"w_kind_{k}", -2.0, 2.0)
    for r in sorted({c.role for c in candidates if not c.is_shortcut}):
        params[f"w_role_{r}"] = trial.suggest_float(f"w_role_{r}", -1.0, 1.0)
    params["depth_bias"] = trial.suggest_float("depth_bias", -1.0, 1.0)
    params["jitter"] = trial.suggest_float("jitter", 0.0, 1.0)
    return params


def suggest_params(trial: optuna.Trial, candidates: list[Candidate],
                   lr_range: tuple[float, float]) -> dict[str, float]:
    """One short trial's parameters: the weights, the learning rate and the budget's fill."""
    params = suggest_weights(trial, candidates)
    params["lr"] = trial.suggest_float("lr", *lr_range, log=True)
    # Plans below the budget too, so the trials trace a params-vs-score Pareto front.
    params["fill"] = trial.suggest_float("fill", 0.3, 1.0)
    return params


def enqueue_proxy_trials(study: optuna.Study, candidates: list[Candidate], lr: float) -> None:
    """The proxy plan (all weights 0) first, then LoRA-only and no-shortcut variants."""
    base = {f"w_kind_{k}": 0.0 for k in {kind_of(c) for c in candidates}}
    base.update({f"w_role_{r}": 0.0 for r in {c.role for c in candidates if not c.is_shortcut}})
    base.update(depth_bias=0.0, jitter=0.0, lr=lr, fill=1.0)
    study.enqueue_trial(base, user_attrs={"origin": "proxy plan"})
    kinds = {kind_of(c) for c in candidates}
    if "lora" in kinds and len(kinds) > 1:
        only_lora = {**base, **{f"w_kind_{k}": -2.0 for k in kinds if k != "lora"}}
        study.enqueue_trial(only_lora, user_attrs={"origin": "proxy plan, LoRA preferred"})


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
