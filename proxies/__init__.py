"""Zero-cost proxies for adapter candidates, joint scoring and static allocation.

    PROXIES                     name -> Proxy class (grad-norm, snip, synflow, fisher, grad-proj)
    DEFAULT_PROXY               the best-ranking proxy on benchmarks/proxy_quality.py
    get_proxy(name)             an instance; ValueError listing valid names otherwise
    score_candidates(model, layout, candidates, batches, proxy=DEFAULT_PROXY, *,
                     loss_fn=None, seed=0, joint=True) -> {candidate.key: float}
    allocate(candidates, scores, budget, *, base_params=None) -> Allocation (list of Candidate)
    static_plan(model, layout, space, batches, budget, proxy=DEFAULT_PROXY, *, seed=0,
                loss_fn=None, **plan_fields) -> nas.Plan
"""
from .base import DEFAULT_PROXY, PROXIES, CandidateSignal, Proxy, get_proxy, register_proxy
from . import fisher, grad_norm, grad_proj, snip, synflow  # noqa: F401  (registers proxies)
from .allocation import Allocation, allocate
from .scoring import score_candidates, score_many, static_plan

__all__ = [
    "DEFAULT_PROXY", "PROXIES", "Allocation", "CandidateSignal", "Proxy", "allocate", "get_proxy",
    "register_proxy", "score_candidates", "score_many", "static_plan",
]
