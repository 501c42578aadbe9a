"""Zero-cost proxies for adapter candidates, joint scoring and the allocation (scores -> selection).

    PROXIES                     name -> Proxy class (grad-norm, snip, synflow, fisher, grad-proj)
    DEFAULT_PROXY               the best-ranking proxy on benchmarks/proxy_quality.py
    get_proxy(name)             an instance; ValueError listing valid names otherwise
    score_candidates(model, layout, candidates, batches, proxy=DEFAULT_PROXY, *,
                     loss_fn=None, seed=0, joint=True) -> {candidate.key: float}
    allocate(candidates, scores, budget) -> Allocation (the selected Candidates)
    Sensitivity(supernet, warmup_steps=...)   AdaLoRA |θ·∇θ| moving averages during supernet training
    trained_importance(sensitivity, candidates, normalise="median") -> {candidate.key: float}
nas.static_plan builds a plan from these.
"""
from .base import DEFAULT_PROXY, PROXIES, CandidateSignal, Proxy, get_proxy, register_proxy
from . import fisher, grad_norm, grad_proj, snip, synflow  # noqa: F401  (registers proxies)
from .allocation import Allocation, allocate
from .scoring import score_candidates, score_many
from .trained import Sensitivity, normalise_within_kind, trained_importance

__all__ = [
    "DEFAULT_PROXY", "PROXIES", "Allocation", "CandidateSignal", "Proxy", "allocate", "get_proxy",
    "register_proxy", "score_candidates", "score_many",
    "Sensitivity", "normalise_within_kind", "trained_importance",
]
